"""Motion: mean optical-flow magnitude (Farneback) between consecutive frames (column ``motion``).

Four pairs of consecutive frames, spread uniformly over the clip, are decoded at 160 px width in
grey; the score is the mean flow magnitude in pixels per frame at that width. Static slideshows and
near-still clips score ~0; a panning camera or a moving subject scores 0.5–5 and more.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.encoders.base import uniform_indices
from curate.media.frames import clip_groups, decode_clips
from curate.scorers import Scorer
from curate.store import Root


class MotionScorer(Scorer):
    name = "motion"
    incremental = True
    scope = "clip"  # decodes each clip: per batch, on the GPU workers

    def __init__(self, pairs: int | str = 4, width: int | str = 160, workers: int | str = 2) -> None:
        self.pairs, self.width, self.workers = int(pairs), int(width), int(workers)

    def columns(self, root: Root) -> list[str]:
        return ["motion", "motion_error"]

    def frame_indices(self, num_frames_in_clip: int, fps: float) -> list[int]:
        starts = uniform_indices(max(1, num_frames_in_clip - 1), self.pairs)
        return [i for s in starts for i in (s, min(s + 1, num_frames_in_clip - 1))]

    def decode_size(self, width: int, height: int):
        w = self.width
        h = max(2, int(round(height * w / width / 2)) * 2)
        return (w, h)

    def preprocess(self, frames: np.ndarray) -> float:
        import cv2

        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        mags = []
        for a, b in zip(grey[0::2], grey[1::2]):
            flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            mags.append(float(np.linalg.norm(flow, axis=-1).mean()))
        return float(np.mean(mags)) if mags else 0.0

    def compute(self, root: Root, clip_ids: pa.Array) -> pa.Table:
        scores, errors = {}, {}
        for c, value, err in decode_clips(root, self, clip_groups(root, clip_ids), workers=self.workers,
                                          frames_per_clip=2 * self.pairs):
            if err is None:
                scores[c["clip_id"]] = value
            else:
                errors[c["clip_id"]] = f"decode: {err}"
        ids = clip_ids.to_pylist()
        return pa.table({"clip_id": clip_ids, "motion": pa.array([scores.get(i) for i in ids], pa.float64()),
                         "motion_error": pa.array([errors.get(i) for i in ids], pa.string())})
