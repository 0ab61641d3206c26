"""Cheap visual quality without a model: sharpness, brightness, contrast, black and frozen frames, bars.

``frames`` frames (default 8; fewer distinct ones in a shorter clip) spread uniformly over the clip
are decoded at ``width`` px (default 256) and turned to grey (luma, 0-255). Columns:

- ``letterbox`` / ``pillarbox``: fraction of the frame height (width) taken by black bars, top +
  bottom (left + right). A row (column) is a bar when it is dark in *every* sampled frame (its mean
  luma at most ``bar_level``, default 24), counted inward from both edges; bars count only when
  both sides have them, so a dark sky or a black floor alone is not a letterbox. 1.0 when every
  row is dark (no picture at all).
- ``sharpness``: variance of the Laplacian of the grey frame inside the bars (the classic blur
  measure), mean over the frames that are not black. Scale-dependent: values are at ``width`` px;
  a sharp test pattern scores in the thousands, a blurred one tens; 0 when every frame is black.
- ``brightness``: mean luma / 255 inside the bars (0 black .. 1 white), mean over frames.
- ``contrast``: RMS contrast, the standard deviation of luma / 255 inside the bars, mean over frames.
- ``black_frac``: fraction of the sampled frames that are black: at least 98% of the pixels with
  luma at most 10% of the range (ffmpeg ``blackdetect``'s defaults ``pic_th=0.98``, ``pix_th=0.10``).
- ``frozen_frac``: fraction of the pairs of consecutive sampled frames that are near-identical (mean
  absolute difference below ``frozen_diff`` grey levels, default 1.0): a still picture or a stuck
  stream scores 1, moving video 0 (the samples are spread over the clip, so duplicated frames from a
  frame-rate conversion do not count).

The work is numpy/OpenCV on a few 256 px frames, done in the decode threads: a small fraction of a
decode of the clip.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from curate.encoders.base import uniform_indices
from curate.media.frames import clip_groups, decode_clips
from curate.scorers import Scorer
from curate.scorers.pixels import result_table, size_for_width
from curate.store import Root

COLUMNS = ["sharpness", "brightness", "contrast", "black_frac", "frozen_frac", "letterbox", "pillarbox"]
#: ffmpeg blackdetect defaults: a pixel is black at <= 10% of the luma range, a picture at >= 98% black pixels
BLACK_PIXEL, BLACK_PICTURE = 0.10 * 255, 0.98


def bar_fraction(dark: np.ndarray) -> float:
    """Fraction of ``dark`` (one bool per row or column) covered by dark runs from both ends, counted only
    when both ends have one; 1.0 when all are dark."""
    n = len(dark)
    if n == 0 or dark.all():
        return 1.0
    head = int(np.argmin(dark))  # index of the first non-dark entry = length of the leading run
    tail = int(np.argmin(dark[::-1]))
    return (head + tail) / n if head and tail else 0.0


def frame_quality(grey: np.ndarray, *, bar_level: float = 24.0, frozen_diff: float = 1.0) -> dict[str, float]:
    """The quality columns of one clip from its sampled grey frames [N, H, W] (uint8)."""
    import cv2

    g = grey.astype(np.float32)
    n, h, w = g.shape
    rows_dark = (g.mean(axis=2) <= bar_level).all(axis=0)
    cols_dark = (g.mean(axis=1) <= bar_level).all(axis=0)
    letterbox, pillarbox = bar_fraction(rows_dark), bar_fraction(cols_dark)
    top = bottom = left = right = 0
    if 0 < letterbox < 1:
        top, bottom = int(np.argmin(rows_dark)), int(np.argmin(rows_dark[::-1]))
    if 0 < pillarbox < 1:
        left, right = int(np.argmin(cols_dark)), int(np.argmin(cols_dark[::-1]))
    active = g[:, top:h - bottom, left:w - right] if letterbox < 1 and pillarbox < 1 else g
    black = (g <= BLACK_PIXEL).reshape(n, -1).mean(axis=1) >= BLACK_PICTURE
    sharp = [float(cv2.Laplacian(f, cv2.CV_32F).var()) for f, b in zip(active, black) if not b]
    diffs = np.abs(np.diff(g, axis=0)).reshape(n - 1, -1).mean(axis=1) if n > 1 else np.zeros(0)
    return {
        "sharpness": float(np.mean(sharp)) if sharp else 0.0,
        "brightness": float(active.mean() / 255.0),
        "contrast": float(active.reshape(n, -1).std(axis=1).mean() / 255.0),
        "black_frac": float(black.mean()),
        "frozen_frac": float((diffs < frozen_diff).mean()) if len(diffs) else 0.0,
        "letterbox": float(letterbox),
        "pillarbox": float(pillarbox),
    }


class QualityScorer(Scorer):
    name = "quality"
    incremental = True
    #: scores each clip on its own (any subset of clips, in any batch); nothing needs the whole root
    per_clip: ClassVar[bool] = True

    def __init__(self, frames: int | str = 8, width: int | str = 256, bar_level: float | str = 24.0,
                 frozen_diff: float | str = 1.0, workers: int | str = 2) -> None:
        self.n, self.width, self.workers = max(2, int(frames)), int(width), int(workers)
        self.bar_level, self.frozen_diff = float(bar_level), float(frozen_diff)

    def columns(self, root: Root) -> list[str]:
        return [*COLUMNS, "sharpness_error"]

    # sampler protocol (frames.decode_clips)
    def frame_indices(self, num_frames_in_clip: int, fps: float) -> list[int]:
        # each frame once: a clip shorter than `frames` must not look frozen for its repeated samples
        return sorted(set(uniform_indices(num_frames_in_clip, self.n)))

    def decode_size(self, width: int, height: int):
        return size_for_width(width, height, self.width)

    def preprocess(self, frames: np.ndarray) -> dict[str, float]:
        import cv2

        grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
        return frame_quality(grey, bar_level=self.bar_level, frozen_diff=self.frozen_diff)

    def compute(self, root: Root, clip_ids: pa.Array) -> pa.Table:
        values: dict[str, dict] = {}
        errors: dict[str, str] = {}
        if len(clip_ids):
            for c, value, err in decode_clips(root, self, clip_groups(root, clip_ids), workers=self.workers,
                                              frames_per_clip=self.n):
                if err is None:
                    values[c["clip_id"]] = value
                else:
                    errors[c["clip_id"]] = f"decode: {err}"
        for cid in clip_ids.to_pylist():  # not an ok clip any more (or never decoded): say so
            if cid not in values and cid not in errors:
                errors[cid] = "clip is not an ok clip of the clips table"
        return result_table(clip_ids, dict.fromkeys(COLUMNS, pa.float64()), values, errors, ["sharpness_error"])
