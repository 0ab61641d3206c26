"""An example third-party curate plugin: a colour-histogram "encoder".

Clips become the average RGB histogram of their frames; captions become a histogram of the colour
words they mention. Useless for real curation, but it shows the whole plugin API in one file, with no
model weights: `pip install ./examples/curate-colorhist`, then `curate plugins` lists `colorhist` and
`curate embed --encoder colorhist -o bins=4` runs it.
"""

from __future__ import annotations

import numpy as np

from curate import hookimpl
from curate.encoders.base import Encoder, EncoderInfo, l2_normalize

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
          "white": (255, 255, 255), "black": (0, 0, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255)}


@hookimpl
def register_encoders(register):
    register("colorhist", ColorHistEncoder, description="example plugin: RGB histogram of frames vs colour words",
             options={"bins": "bins per channel (default 4)", "frames": "frames per clip (default 4)"})


class ColorHistEncoder(Encoder):
    name = "colorhist"
    score_range = "0 (no colour word matches) to 1 (the clip is entirely the named colour)"

    def __init__(self, device: str | None = "cpu", bins: int | str = 4, frames: int | str = 4) -> None:
        self.device = "cpu"
        self.bins, self.frames = int(bins), int(frames)

    @property
    def info(self) -> EncoderInfo:
        d = self.bins ** 3
        return EncoderInfo("colorhist", f"rgb-hist-{self.bins}", "none (no weights)", d, self.frames, 0, (d,))

    def _bin(self, rgb: np.ndarray) -> np.ndarray:
        q = np.minimum(rgb.astype(np.int64) * self.bins // 256, self.bins - 1)
        return (q[..., 0] * self.bins + q[..., 1]) * self.bins + q[..., 2]

    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        return np.bincount(self._bin(frames).ravel(), minlength=self.bins ** 3).astype(np.float32)

    def embed_video_batch(self, inputs) -> np.ndarray:
        return l2_normalize(np.stack(inputs))

    def embed_text_batch(self, texts) -> np.ndarray:
        out = np.zeros((len(texts), self.bins ** 3), np.float32)
        for i, t in enumerate(texts):
            for word, rgb in COLORS.items():
                if word in t.lower().split():
                    out[i, self._bin(np.array(rgb))] += 1
        out[out.sum(1) == 0] = 1.0  # no colour word: uniform
        return l2_normalize(out)
