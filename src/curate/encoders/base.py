"""The encoder interface: what a plugin author implements to add a video-text encoder.

An encoder turns sampled frames of a clip into a vector (or a small stack of query vectors) and
captions into vectors in the same space. Authors implement three methods (``preprocess``,
``embed_video_batch`` and ``embed_text_batch``); batching, device choice, precision and the
bookkeeping around them live in the embed stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from curate.errors import CurateError
from curate.vectors import cosine

__all__ = ["Encoder", "EncoderInfo", "autocast", "autocast_dtype", "parse_bool", "resolve_device", "uniform_indices"]


def uniform_indices(num_frames_in_clip: int, n: int) -> list[int]:
    """Indices of ``n`` frames spread uniformly over a clip: the middle frame of each of ``n`` equal segments.

    This is the "middle" sampling InternVideo uses at test time. A clip shorter than ``n`` frames
    repeats frames (indices stay sorted), so every encoder always receives exactly ``n`` frames.
    """
    if num_frames_in_clip <= 0:
        raise ValueError("clip has no frames")
    seg = num_frames_in_clip / n
    return [min(num_frames_in_clip - 1, int(seg * i + seg / 2)) for i in range(n)]


def resolve_device(device: str | None) -> str:
    """``auto``/None picks cuda when available, else cpu; anything else is passed through."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


PRECISIONS = ("auto", "fp32", "float32", "fp16", "float16", "bf16", "bfloat16")


def autocast_dtype(precision: str, device: str, encoder: str = "encoder"):
    """The autocast dtype for a ``precision=`` option: None (fp32) on CPU or for fp32; on CUDA ``auto``
    picks bf16 where supported, else fp16."""
    import torch

    precision = str(precision).lower()
    if precision not in PRECISIONS:
        raise CurateError(f"{encoder} precision must be auto, fp32, fp16 or bf16, not {precision!r}")
    if precision in ("fp32", "float32") or not str(device).startswith("cuda"):
        return None
    if precision in ("fp16", "float16"):
        return torch.float16
    if precision in ("bf16", "bfloat16"):
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(dtype):
    """A CUDA autocast context for ``dtype``, or a no-op for None."""
    import contextlib

    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type="cuda", dtype=dtype)


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class EncoderInfo:
    """What the dataset card and `curate plugins` say about a loaded encoder."""

    name: str
    model: str
    weights: str  # tag, hub id, URL or path; "random" for randomly initialised weights
    embed_dim: int
    num_frames: int
    frame_size: int
    video_emb_shape: tuple[int, ...]  # (D,) for one vector per clip, (Q, D) for query stacks
    extra: dict[str, Any] = field(default_factory=dict)


class Encoder:
    """Base class for encoders. Subclasses set the class attributes and implement three methods.

    Contract:
    - ``preprocess(frames)`` gets ``uint8`` RGB frames ``[T, H, W, 3]`` (T = the sampled frames of one
      clip, chosen by :meth:`frame_indices`) and returns the model input of one clip (a tensor).
    - ``embed_video_batch(inputs)`` gets a list of those tensors and returns a float32 array
      ``[B, *video_emb_shape]``, L2-normalised along the last axis.
    - ``embed_text_batch(texts)`` returns ``[N, D]`` float32, L2-normalised.
    - ``similarity(video, text)`` (optional override) maps ``[B, *video_emb_shape]`` x ``[B, D]`` (pairs)
      to ``[B]``; the default is the cosine of two unit vectors (a dot product; the best query's for
      stacks). An override is the embedding set's similarity: `curate embed` records it in ``_meta.json``
      (``encoder_similarity``) and alignment scores, search (exact only) and retrieval metrics then create
      the encoder through its plugin factory, once per process, and call it
      (:meth:`curate.embeddings.EmbeddingSet.similarity`). Without an override they use the stored
      vectors directly, with no model.
    """

    name: ClassVar[str] = "encoder"
    #: what the similarity score typically looks like for matching and random pairs (README/card)
    score_range: ClassVar[str] = ""

    def __init__(self, device: str | None = "auto", **options: Any) -> None:
        self.device = resolve_device(device)
        self.options = options

    # -- what authors implement -------------------------------------------------------------
    @property
    def info(self) -> EncoderInfo:  # pragma: no cover - abstract
        raise NotImplementedError

    def preprocess(self, frames: np.ndarray):  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_video_batch(self, inputs: Sequence[Any]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_text_batch(self, texts: Sequence[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- helpers with sensible defaults -----------------------------------------------------
    def frame_indices(self, num_frames_in_clip: int, fps: float) -> list[int]:
        """Which frames of a clip (0-based, relative to its first frame) the encoder wants."""
        return uniform_indices(num_frames_in_clip, self.info.num_frames)

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """Ask the decoder to resize frames to (width, height); None decodes at the native size."""
        return None

    def similarity(self, video: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Alignment score of aligned pairs (row i of ``video`` with row i of ``text``); overriding it changes
        the scores of this encoder's embedding sets (see the class docstring)."""
        return cosine(video, text)  # the default: the best query's cosine for query stacks (BLIP-2 ITC)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        out = [self.embed_text_batch(list(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.info.embed_dim), np.float32)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
    """L2-normalise a torch tensor or numpy array along ``axis``."""
    if isinstance(x, np.ndarray):
        return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)
    import torch.nn.functional as F

    return F.normalize(x, dim=axis, eps=eps)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CurateError(message)
