"""Which frames CLIP4Clip sees: the Searchium notebook's 1-fps rule and CLIP4Clip's linspace cut."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["linspace_cut", "one_fps_indices"]


def one_fps_indices(num_frames_in_clip: int, fps: float, rate: float = 1.0) -> list[int]:
    """Frame indices of the Searchium notebook's ``video2image`` (``frame_rate=rate``, 1 per second).

    ``fps`` is truncated to an integer (``int(CAP_PROP_FPS)``); the clip lasts ``ceil(n / fps)`` seconds;
    indices are ``floor(arange(0, seconds * fps, fps / rate))``, keeping those inside the clip (the
    notebook stops at the first failed read). A video under 1 fps counts as 1 fps (the notebook returns
    a blank frame there).
    """
    n = int(num_frames_in_clip)
    if n <= 0:
        raise ValueError("clip has no frames")
    if not math.isfinite(float(fps)) or float(fps) <= 0:
        raise ValueError(f"clip has no usable frame rate (fps={fps!r})")
    if not rate > 0:
        raise ValueError(f"sampling rate must be positive, got {rate!r}")
    fps_int = max(1, int(fps))
    seconds = -(-n // fps_int)
    idx = np.floor(np.arange(0, seconds * fps_int, fps_int / float(rate))).astype(np.int64)
    out = [int(i) for i in idx if i < n]
    return out or [0]


def linspace_cut(indices: Sequence[int], k: int) -> list[int]:
    """Keep ``k`` of ``indices`` the way CLIP4Clip does (``slice_framepos=2``); ``k<=0`` keeps all."""
    indices = list(indices)
    if k <= 0 or len(indices) <= k:
        return indices
    sel = np.linspace(0, len(indices) - 1, num=k, dtype=int)
    return [indices[i] for i in sel]

