"""The `viclip` encoder: ViCLIP (InternVid), a CLIP ViT with joint spatiotemporal attention over 8 frames.

Model (re-implemented here, inference only; see docs/encoders.md section "3. ViCLIP"):

- vision: Conv3d patch embedding (tubelet kernel 1, so no temporal patching), class token, a spatial
  positional table shared by every frame, a temporal positional table ``[1, T, W]`` added to the patch
  tokens (its mean over time when T == 1), tokens ordered patch-major / time-minor, ``ln_pre``, pre-LN
  transformer blocks attending jointly over all ``1 + N*T`` tokens, ``ln_post``, token 0 ``@ proj``.
  Training-time token masking is never applied.
- text: the CLIP text transformer with a 32-token context (causal attention, fp32-upcasting
  LayerNorm), pooled at the EOT token (the arg-max token id) ``@ text_projection``.
- QuickGELU MLPs in both towers; all LayerNorms use eps 1e-5.

The package: ``config.py`` (sizes, presets, sizes from checkpoint shapes), ``model.py`` (the network),
``loading.py`` (checkpoint files, strict load), ``tokenizer.py`` (CLIP BPE), and here the frame
preprocessing and :class:`ViCLIPEncoder`, the adapter the embed stage calls.

Parameter names follow the original module tree, so ``torch.load(p)['model']`` of the public
``ViClip-InternVid-10M-FLT.pth`` loads strictly (keys ``temp``, ``vision_encoder.*``, ``text_encoder.*``).
The ``OpenGVLab/ViCLIP-*-hf`` safetensors layout is accepted with the same names, optionally under a
common prefix such as ``model.``; anything that still does not match is refused with the key names.

Preprocessing follows the InternVid demo (``frames2tensor``): uint8 RGB frames are resized with
``cv2.resize`` (INTER_LINEAR, to S x S, no crop, aspect not preserved), scaled by 1/255 and normalised
with the ImageNet mean/std in float64, then cast to float32. Frames: 8, the middle frame of each of 8
equal segments (InternVideo's test-time "middle" sampling).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from curate.encoders.base import Encoder, EncoderInfo, autocast, autocast_dtype, l2_normalize
from curate.encoders.pixel_stats import IMAGENET_MEAN, IMAGENET_STD
from curate.encoders.viclip.config import PRESETS, ViCLIPConfig, infer_config, read_config_overrides
from curate.encoders.viclip.loading import (
    DEFAULT_WEIGHTS,
    load_viclip_state_dict,
    read_checkpoint,
    resolve_viclip_weights,
    strip_common_prefix,
)
from curate.encoders.viclip.model import build_viclip
from curate.encoders.viclip.tokenizer import ViCLIPTokenizer
from curate.errors import CurateError

__all__ = [
    "DEFAULT_WEIGHTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "ViCLIPConfig",
    "ViCLIPEncoder",
    "ViCLIPTokenizer",
    "build_viclip",
    "infer_config",
    "load_viclip_state_dict",
    "preprocess_viclip_frames",
    "read_checkpoint",
]


def preprocess_viclip_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB ``[T, H, W, 3]`` -> float32 ``[T, 3, size, size]`` exactly as the InternVid demo does."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise CurateError(f"viclip expects RGB frames [T, H, W, 3], got shape {list(frames.shape)}")
    if frames.dtype != np.uint8:
        raise CurateError(f"viclip expects uint8 frames, got {frames.dtype}")
    resized = np.stack([cv2.resize(np.ascontiguousarray(f), (size, size), interpolation=cv2.INTER_LINEAR)
                        for f in frames])
    x = resized / 255.0  # float64, as the reference
    x = (x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


class ViCLIPEncoder(Encoder):
    name = "viclip"
    score_range = ("cosine of unit vectors; with the InternVid-10M-FLT ViCLIP-L weights, matching video-caption "
                   "pairs typically score about 0.2-0.4 and unrelated pairs lower (an estimate, not measured "
                   "on a benchmark here); the InternVid demo ranks captions by softmax(100 * cosine)")

    def __init__(self, device: str | None = "auto", weights: str | None = None, size: str | None = None,
                 frames: int | str | None = None, image_size: int | str | None = None, config: str | None = None,
                 precision: str = "auto", **options: Any) -> None:
        super().__init__(device=device)
        if options:
            raise CurateError(f"Unknown viclip option(s): {', '.join(options)} (known: weights, size, frames, "
                              "image_size, config, precision)")

        if size is not None and str(size).lower() not in PRESETS:
            raise CurateError(f"viclip size must be 'l' or 'b', not {size!r}")
        size_key = str(size).lower() if size is not None else None
        overrides = read_config_overrides(config) if config else {}
        weights = str(weights) if weights not in (None, "") else DEFAULT_WEIGHTS[size_key or "l"]
        self.extra: dict[str, Any] = {}

        if weights == "random":
            base = asdict(PRESETS[size_key or "l"])
            base.update(overrides)
            cfg = ViCLIPConfig(**base)
            cfg = self._apply_runtime_options(cfg, frames, image_size, allow_resize=True)
            model = build_viclip(cfg, device="cpu")
            self.weights_desc = "random"
        else:
            path = resolve_viclip_weights(weights)
            state, hf_config = read_checkpoint(path)
            state, prefix = strip_common_prefix(state)
            if prefix:
                self.extra["key_prefix_stripped"] = prefix
            if not config and isinstance(hf_config.get("size"), str) and size_key is None:
                size_key = hf_config["size"].lower()
            cfg, guessed = infer_config(state, overrides)
            if size_key is not None and cfg != PRESETS[size_key] and not config:
                other = [k for k, p in PRESETS.items() if p == cfg]
                if other:
                    raise CurateError(f"size={size_key} (from size= or the checkpoint's config.json) does not match "
                                      f"{path}, which holds a ViCLIP-{other[0].upper()} checkpoint; drop size= or "
                                      "pass the matching one")
            if guessed:
                warnings.warn(f"viclip: {', '.join(guessed)} cannot be read from checkpoint shapes and were set "
                              f"to width/64 ({cfg.vision_heads}/{cfg.text_heads}); pass config= with the right "
                              "values if the model was trained otherwise", stacklevel=2)
                self.extra["guessed"] = {k: getattr(cfg, k) for k in guessed}
            cfg = self._apply_runtime_options(cfg, frames, image_size, allow_resize=False)
            model = build_viclip(cfg, meta=True)
            tolerated = load_viclip_state_dict(model, state, source=f"Checkpoint {path}")
            if tolerated:
                self.extra["missing_tolerated"] = tolerated
            self.weights_desc = weights
            del state

        self.config = cfg
        self.model = model.to(self.device).eval()
        self.num_frames = int(frames) if frames not in (None, "") else cfg.num_frames
        self.tokenizer = ViCLIPTokenizer(cfg.context_length)
        self.autocast = autocast_dtype(precision, self.device, "viclip")
        self.precision = "fp32" if self.autocast is None else str(self.autocast).replace("torch.", "")

    @staticmethod
    def _apply_runtime_options(cfg: ViCLIPConfig, frames, image_size, allow_resize: bool) -> ViCLIPConfig:
        if frames not in (None, ""):
            n = int(frames)
            if n != cfg.num_frames and n != 1:
                if not allow_resize:
                    raise CurateError(f"viclip weights have a temporal embedding for {cfg.num_frames} frames; "
                                      f"frames={n} is not supported (use {cfg.num_frames}, or 1 for single images)")
                cfg = replace(cfg, num_frames=n)
        if image_size not in (None, ""):
            s = int(image_size)
            if s != cfg.image_size:
                if not allow_resize:
                    raise CurateError(f"viclip weights are for {cfg.image_size}px input "
                                      f"({cfg.grid}x{cfg.grid} patches of {cfg.patch_size}); image_size={s} is not supported")
                cfg = replace(cfg, image_size=s)
            if s % cfg.patch_size:
                raise CurateError(f"image_size {s} is not a multiple of the patch size {cfg.patch_size}")
        return cfg

    # -- Encoder interface ----------------------------------------------------------------------
    @property
    def info(self) -> EncoderInfo:
        c = self.config
        return EncoderInfo(
            name="viclip", model=c.describe(), weights=self.weights_desc, embed_dim=c.embed_dim,
            num_frames=self.num_frames, frame_size=c.image_size, video_emb_shape=(c.embed_dim,),
            extra={"resize": "cv2 INTER_LINEAR to SxS, no crop", "mean": list(IMAGENET_MEAN),
                   "std": list(IMAGENET_STD), "text_context": c.context_length, "precision": self.precision,
                   "config": asdict(c), **self.extra})

    def preprocess(self, frames: np.ndarray):
        import torch

        return torch.from_numpy(preprocess_viclip_frames(frames, self.config.image_size))

    def _stack(self, inputs):
        import torch

        if isinstance(inputs, np.ndarray):
            inputs = torch.from_numpy(inputs)
        if isinstance(inputs, torch.Tensor):
            x = inputs if inputs.ndim == 5 else inputs.unsqueeze(0)
        else:
            x = torch.stack([torch.as_tensor(t) for t in inputs])
        if x.ndim != 5 or x.shape[2] != 3:
            raise CurateError(f"viclip expects inputs [B, T, 3, S, S], got {list(x.shape)}")
        return x.float()

    def _autocast(self):
        return autocast(self.autocast)

    def embed_video_batch(self, inputs: Sequence[Any]) -> np.ndarray:
        import torch

        x = self._stack(inputs)
        if len(x) == 0:
            return np.zeros((0, self.config.embed_dim), np.float32)
        with torch.inference_mode(), self._autocast():
            v = self.model.encode_vision(x.to(self.device, non_blocking=True))
        return l2_normalize(v.float()).cpu().numpy().astype(np.float32)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return self.tokenizer(list(texts))

    def embed_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if len(texts) == 0:
            return np.zeros((0, self.config.embed_dim), np.float32)
        ids = torch.from_numpy(self.tokenize(texts)).to(self.device)
        with torch.inference_mode(), self._autocast():
            t = self.model.encode_text(ids)
        return l2_normalize(t.float()).cpu().numpy().astype(np.float32)
