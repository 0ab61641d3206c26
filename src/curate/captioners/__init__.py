"""The captioner interface: what a plugin author implements to caption clips with a vision-language model.

A captioner turns the sampled frames of a batch of clips into one caption each. Authors implement
``info`` and ``caption_batch``; frame sampling (``frame_indices``, ``decode_size``, ``preprocess``) has
defaults, and batching, decoding ahead of the model, timing, the degenerate-output checks and the
bookkeeping live in the caption stage (:mod:`curate.stages.caption`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from curate.encoders.base import uniform_indices

__all__ = ["Caption", "Captioner", "CaptionerInfo", "fit_longer_side"]


def fit_longer_side(width: int, height: int, size: int) -> tuple[int, int] | None:
    """(width, height) scaled so the longer side is at most ``size`` px, even numbers; None when it already is."""
    long = max(width, height)
    if long <= size:
        return None
    s = size / long
    return max(2, round(width * s / 2) * 2), max(2, round(height * s / 2) * 2)


@dataclass
class Caption:
    """One generated caption. ``tokens``: generated tokens (None when the backend cannot tell);
    ``truncated``: generation stopped at ``max_new_tokens`` rather than at an end-of-sequence token
    (None: unknown, then the stage compares ``tokens`` with ``max_new_tokens``)."""

    text: str
    tokens: int | None = None
    truncated: bool | None = None


@dataclass
class CaptionerInfo:
    """What the captions table, its ``_meta.json`` and the dataset card say about a loaded captioner."""

    name: str
    model: str  # architecture / model class
    weights: str  # hub id or local directory ("random" for randomly initialised weights)
    prompt: str
    num_frames: int
    generation: dict[str, Any] = field(default_factory=dict)  # max_new_tokens, do_sample, ...
    extra: dict[str, Any] = field(default_factory=dict)


class Captioner:
    """Base class for captioners.

    Contract:
    - ``preprocess(frames)`` gets ``uint8`` RGB frames ``[T, H, W, 3]`` of one clip (chosen by
      :meth:`frame_indices`; it runs in the decoder threads, ahead of the model) and returns what
      ``caption_batch`` takes for that clip (default: the frames as they are).
    - ``caption_batch(inputs)`` gets a list of those and returns one :class:`Caption` (or a plain
      ``str``) per clip, in order. An exception fails the batch; the stage then retries its clips one
      by one, so one bad clip becomes one error row.
    - A captioner that keeps many clips in flight (a serving endpoint) sets ``streams = True`` and
      implements ``caption_stream(items)``: ``(key, input)`` pairs in, ``(key, Caption | str | Exception,
      seconds)`` out in completion order; the stage then feeds it every decoded clip instead of batches
      (an exception in the output is that clip's error row; one raised ends the run after the rows so far
      are written).
    """

    name: ClassVar[str] = "captioner"
    #: True: the stage calls :meth:`caption_stream` (completion order, no batches) instead of caption_batch
    streams: ClassVar[bool] = False

    def __init__(self, device: str | None = "auto", **options: Any) -> None:
        self.device = device
        self.options = options

    @property
    def info(self) -> CaptionerInfo:  # pragma: no cover - abstract
        raise NotImplementedError

    def caption_batch(self, inputs: Sequence[Any]) -> list[Caption | str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def caption_stream(self, items: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Caption | str | Exception, float]]:
        """Captions as they complete: ``(key, caption or the clip's exception, seconds)`` per ``(key, input)``."""
        raise NotImplementedError  # pragma: no cover - only captioners with ``streams = True``

    def frame_indices(self, num_frames_in_clip: int, fps: float) -> list[int]:
        """Which frames of a clip the captioner sees: ``num_frames`` uniform (middle of equal segments)."""
        return uniform_indices(num_frames_in_clip, self.info.num_frames)

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """Ask the decoder for (width, height); None decodes at the native size."""
        return None

    def preprocess(self, frames: np.ndarray) -> Any:
        return frames
