"""Frames to pixel values: the steps of transformers' ``CLIPImageProcessor``, on torch tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from curate.encoders.pixel_stats import CLIP_MEAN, CLIP_STD
from curate.errors import CurateError

__all__ = ["FramePreprocessor"]


def _hw(value: Any, default: tuple[int, int] | None) -> tuple[int, int] | None:
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return int(value), int(value)
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"]), int(value["shortest_edge"])
    raise CurateError(f"Unsupported size in preprocessor_config.json: {value!r}")


@dataclass
class FramePreprocessor:
    """uint8 RGB ``[T,H,W,3]`` -> float32 ``[T,3,crop,crop]``, the steps of transformers' CLIPImageProcessor.

    ``resize_shortest`` resizes the shorter side (keeping the aspect ratio, longer side truncated like
    torchvision); ``resize_hw`` resizes to an exact size; resampling uses torchvision on uint8 with
    antialiasing; rescale and normalise are fused as ``(x - mean/scale) / (std/scale)``.
    """

    resize_shortest: int | None = 224
    resize_hw: tuple[int, int] | None = None
    resample: int = 3  # PIL codes: 0 nearest, 2 bilinear, 3 bicubic
    crop: tuple[int, int] | None = (224, 224)
    rescale: float | None = 1 / 255
    mean: tuple[float, ...] | None = CLIP_MEAN
    std: tuple[float, ...] | None = CLIP_STD

    @classmethod
    def for_size(cls, size: int) -> FramePreprocessor:
        return cls(resize_shortest=size, crop=(size, size))

    @classmethod
    def from_config(cls, cfg: dict, default_size: int = 224) -> FramePreprocessor:
        """Build from a ``preprocessor_config.json`` dict; missing keys take CLIP's defaults."""
        p = cls.for_size(default_size)
        if cfg.get("do_resize", True):
            size = cfg.get("size")
            if isinstance(size, dict) and "shortest_edge" in size:
                p.resize_shortest, p.resize_hw = int(size["shortest_edge"]), None
            elif isinstance(size, (int, float)):  # old configs: an int is the shortest edge
                p.resize_shortest, p.resize_hw = int(size), None
            elif size is not None:
                p.resize_shortest, p.resize_hw = None, _hw(size, None)
        else:
            p.resize_shortest = p.resize_hw = None
        p.resample = int(cfg.get("resample", p.resample))
        if p.resample not in (0, 2, 3):
            raise CurateError(f"preprocessor_config.json resample={p.resample} is not supported (0, 2, 3)")
        p.crop = _hw(cfg.get("crop_size"), p.crop) if cfg.get("do_center_crop", True) else None
        p.rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None
        if cfg.get("do_normalize", True):
            p.mean = tuple(float(v) for v in cfg.get("image_mean", CLIP_MEAN))
            p.std = tuple(float(v) for v in cfg.get("image_std", CLIP_STD))
        else:
            p.mean = p.std = None
        return p

    @property
    def output_size(self) -> int:
        if self.crop:
            return self.crop[0]
        if self.resize_hw:
            return self.resize_hw[0]
        return self.resize_shortest or 0

    def __call__(self, frames: np.ndarray):
        import torch
        import torchvision.transforms.v2.functional as TF

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise ValueError(f"expected uint8 RGB frames [T,H,W,3] with T>0, got shape {frames.shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
        mode = {0: TF.InterpolationMode.NEAREST, 2: TF.InterpolationMode.BILINEAR,
                3: TF.InterpolationMode.BICUBIC}[self.resample]
        h, w = x.shape[-2:]
        if self.resize_shortest:
            s = self.resize_shortest
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(s * long / short)
            new_size = (new_long, s) if w <= h else (s, new_long)
        else:
            new_size = self.resize_hw
        if new_size is not None:
            x = TF.resize(x, list(new_size), interpolation=mode, antialias=True)
        if self.crop:
            x = _center_crop(x, *self.crop)
        x = x.to(torch.float32)
        if self.mean is not None and self.std is not None:
            scale = self.rescale or 1.0
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1) / scale
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1) / scale
            x = (x - mean) / std
        elif self.rescale:
            x = x * self.rescale
        return x

    def describe(self) -> dict[str, Any]:
        return {"resize_shortest": self.resize_shortest, "resize_hw": self.resize_hw,
                "resample": {0: "nearest", 2: "bilinear", 3: "bicubic"}[self.resample], "crop": self.crop,
                "rescale": self.rescale, "mean": self.mean, "std": self.std}


def _center_crop(x, ch: int, cw: int):
    """transformers' torchvision center crop: zero-pad when smaller, top/left = int((size - crop) / 2)."""
    import torchvision.transforms.v2.functional as TF

    h, w = x.shape[-2:]
    if cw > w or ch > h:
        pad = [(cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0,
               (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0]
        x = TF.pad(x, pad, fill=0)
        h, w = x.shape[-2:]
    top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
    return x[..., top:top + ch, left:left + cw]

