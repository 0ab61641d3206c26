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

import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from curate.encoders.base import Encoder, EncoderInfo, autocast, autocast_dtype, l2_normalize
from curate.encoders.pixel_stats import IMAGENET_MEAN, IMAGENET_STD
from curate.errors import CurateError, WeightsUnavailable
from curate.weights import read_state_dict, resolve_weights, strip_prefix

__all__ = [
    "DEFAULT_WEIGHTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ViCLIPConfig",
    "ViCLIPEncoder",
    "ViCLIPTokenizer",
    "build_viclip",
    "infer_config",
    "load_viclip_state_dict",
    "preprocess_viclip_frames",
]


#: default checkpoint per size (the L/14 .pth of the paper; B/16 only exists as the -hf safetensors repo)
DEFAULT_WEIGHTS = {"l": "OpenGVLab/ViCLIP/ViClip-InternVid-10M-FLT.pth", "b": "OpenGVLab/ViCLIP-B-16-hf"}


@dataclass(frozen=True)
class ViCLIPConfig:
    """Hyper-parameters of both towers (defaults: ViCLIP-L/14)."""

    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    num_frames: int = 8
    tubelet: int = 1
    embed_dim: int = 768  # vision output_dim == text embed_dim
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    context_length: int = 32
    vocab_size: int = 49408

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def describe(self) -> str:
        for name, preset in PRESETS.items():
            if self == preset:
                return {"l": "ViCLIP-L/14", "b": "ViCLIP-B/16"}[name]
        return (f"ViCLIP-custom(vision {self.vision_width}w/{self.vision_layers}L/{self.vision_heads}h/p{self.patch_size}, "
                f"text {self.text_width}w/{self.text_layers}L/{self.text_heads}h, out {self.embed_dim})")


PRESETS = {
    "l": ViCLIPConfig(),
    "b": ViCLIPConfig(patch_size=16, vision_width=768, vision_layers=12, vision_heads=12, embed_dim=512,
                      text_width=512, text_layers=12, text_heads=8),
}

#: names used by the reference constructors (and the parity fixture's config.json) -> our fields
_VISION_ALIASES = {"input_resolution": "image_size", "patch_size": "patch_size", "width": "vision_width",
                   "layers": "vision_layers", "heads": "vision_heads", "output_dim": "embed_dim",
                   "kernel_size": "tubelet", "num_frames": "num_frames"}
_TEXT_ALIASES = {"embed_dim": "embed_dim", "context_length": "context_length", "vocab_size": "vocab_size",
                 "transformer_width": "text_width", "transformer_heads": "text_heads",
                 "transformer_layers": "text_layers", "width": "text_width", "heads": "text_heads",
                 "layers": "text_layers"}


def read_config_overrides(path: str | Path) -> dict[str, Any]:
    """Hyper-parameters from a JSON file: flat ``ViCLIPConfig`` field names, and/or ``{"vision": {...},
    "text": {...}}`` with the reference constructor names (the parity fixture's config.json), and/or
    ``{"size": "l"|"b"}`` (the -hf repos' config.json). Unknown keys are ignored."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CurateError(f"viclip config {str(p)!r} does not exist")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CurateError(f"viclip config {p} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise CurateError(f"viclip config {p} must hold a JSON object")
    out: dict[str, Any] = {}
    size = raw.get("size")
    if isinstance(size, str) and size.lower() in PRESETS:
        out.update(asdict(PRESETS[size.lower()]))
    names = {f.name for f in fields(ViCLIPConfig)}
    out.update({k: int(v) for k, v in raw.items() if k in names})
    for section, aliases in (("vision", _VISION_ALIASES), ("text", _TEXT_ALIASES)):
        sub = raw.get(section)
        if isinstance(sub, dict):
            out.update({aliases[k]: int(v) for k, v in sub.items() if k in aliases and v is not None})
    if "max_txt_l" in raw:
        out["context_length"] = int(raw["max_txt_l"])
    return out


def _default_heads(width: int, preset_key: str) -> int:
    for preset in PRESETS.values():
        if getattr(preset, preset_key.replace("heads", "width")) == width:
            return getattr(preset, preset_key)
    return max(1, width // 64)  # CLIP convention: 64-dim heads


def infer_config(state: dict, overrides: dict[str, Any] | None = None) -> tuple[ViCLIPConfig, list[str]]:
    """Tower sizes from checkpoint shapes (keys without prefix). Returns the config and the names of the
    fields that could not be read from shapes and were guessed (attention heads)."""
    overrides = dict(overrides or {})

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CurateError(f"Checkpoint has no {key!r}, so ViCLIP sizes cannot be inferred from it "
                              "(pass config=path.json, or check that this is a ViCLIP checkpoint)")
        return tuple(state[key].shape)

    def count_layers(prefix: str) -> int:
        pat = re.compile(re.escape(prefix) + r"(\d+)\.")
        idx = {int(m.group(1)) for k in state if (m := pat.match(k))}
        return max(idx) + 1 if idx else 0

    conv = shape("vision_encoder.conv1.weight")  # [W, 3, k, p, p]
    if len(conv) != 5:
        raise CurateError(f"vision_encoder.conv1.weight has shape {list(conv)}; ViCLIP expects a Conv3d weight "
                          "[width, 3, tubelet, patch, patch]")
    pos = shape("vision_encoder.positional_embedding")  # [grid^2 + 1, W]
    grid = math.isqrt(pos[0] - 1)
    values = {
        "vision_width": conv[0], "tubelet": conv[2], "patch_size": conv[-1], "image_size": grid * conv[-1],
        "vision_layers": count_layers("vision_encoder.transformer.resblocks."),
        "num_frames": shape("vision_encoder.temporal_positional_embedding")[1],
        "embed_dim": shape("vision_encoder.proj")[1],
        "text_width": shape("text_encoder.token_embedding.weight")[1],
        "vocab_size": shape("text_encoder.token_embedding.weight")[0],
        "context_length": shape("text_encoder.positional_embedding")[0],
        "text_layers": count_layers("text_encoder.transformer.resblocks."),
    }
    guessed = []
    for key, width_key in (("vision_heads", "vision_width"), ("text_heads", "text_width")):
        if key not in overrides:
            values[key] = _default_heads(values[width_key], key)
            if not any(getattr(p, width_key) == values[width_key] for p in PRESETS.values()):
                guessed.append(key)
    values.update(overrides)  # explicit config wins; the strict shape check catches contradictions
    return ViCLIPConfig(**values), guessed


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------

def _torch_modules():
    """Module classes are defined lazily so that importing this file does not import torch."""
    global _MODULES
    if _MODULES is not None:
        return _MODULES
    import torch
    import torch.nn.functional as F
    from torch import nn

    class LayerNorm(nn.LayerNorm):
        """LayerNorm computed in float32 whatever the input dtype (as CLIP's text tower does)."""

        def forward(self, x):
            return super().forward(x.float()).to(x.dtype)

    class QuickGELU(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(1.702 * x)

    class Attention(nn.Module):
        """Multi-head self-attention with nn.MultiheadAttention's parameter names, on [B, L, W] tensors."""

        def __init__(self, width: int, heads: int, causal: bool):
            super().__init__()
            if width % heads:
                raise CurateError(f"width {width} is not divisible by {heads} attention heads")
            self.heads, self.causal = heads, causal
            self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
            self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
            self.out_proj = nn.Linear(width, width)

        def forward(self, x):
            b, n, w = x.shape
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
            q, k, v = qkv.view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
            return self.out_proj(y.transpose(1, 2).reshape(b, n, w))

    class ResidualAttentionBlock(nn.Module):
        def __init__(self, width: int, heads: int, causal: bool):
            super().__init__()
            self.attn = Attention(width, heads, causal)
            self.ln_1 = LayerNorm(width)
            self.mlp = nn.Sequential()
            self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
            self.mlp.add_module("gelu", QuickGELU())
            self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
            self.ln_2 = LayerNorm(width)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class Transformer(nn.Module):
        def __init__(self, width: int, layers: int, heads: int, causal: bool):
            super().__init__()
            self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, causal) for _ in range(layers)])

        def forward(self, x):
            for blk in self.resblocks:
                x = blk(x)
            return x

    class VisionTower(nn.Module):
        def __init__(self, c: ViCLIPConfig):
            super().__init__()
            w = c.vision_width
            self.conv1 = nn.Conv3d(3, w, (c.tubelet, c.patch_size, c.patch_size),
                                   (c.tubelet, c.patch_size, c.patch_size), bias=False)
            self.class_embedding = nn.Parameter(torch.empty(w))
            self.positional_embedding = nn.Parameter(torch.empty(c.grid ** 2 + 1, w))
            self.temporal_positional_embedding = nn.Parameter(torch.empty(1, c.num_frames, w))
            self.ln_pre = LayerNorm(w)
            self.transformer = Transformer(w, c.vision_layers, c.vision_heads, causal=False)
            self.ln_post = LayerNorm(w)
            self.proj = nn.Parameter(torch.empty(w, c.embed_dim))

        def forward(self, video):  # [B, T, 3, S, S]
            x = self.conv1(video.permute(0, 2, 1, 3, 4))  # [B, W, T', g, g]
            b, w, t = x.shape[:3]
            x = x.flatten(3).permute(0, 2, 3, 1)  # [B, T', N, W]
            x = x + self.positional_embedding[1:].to(x.dtype)  # spatial table, shared by all frames
            temporal = self.temporal_positional_embedding.to(x.dtype)  # [1, T, W]
            if t == 1:
                temporal = temporal.mean(1, keepdim=True)
            elif t != temporal.shape[1]:
                raise CurateError(f"ViCLIP was built for {temporal.shape[1]} frames (or 1) but got {t}")
            x = x + temporal.unsqueeze(2)  # [1, T, 1, W] broadcast over patches
            x = x.transpose(1, 2).reshape(b, -1, w)  # patch-major, time-minor: [B, N*T, W]
            cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(b, 1, w)
            x = torch.cat([cls, x], dim=1)
            x = self.transformer(self.ln_pre(x))
            return self.ln_post(x[:, 0]) @ self.proj.to(x.dtype)

    class TextTower(nn.Module):
        def __init__(self, c: ViCLIPConfig):
            super().__init__()
            self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
            self.positional_embedding = nn.Parameter(torch.empty(c.context_length, c.text_width))
            self.transformer = Transformer(c.text_width, c.text_layers, c.text_heads, causal=True)
            self.ln_final = LayerNorm(c.text_width)
            self.text_projection = nn.Parameter(torch.empty(c.text_width, c.embed_dim))

        def forward(self, ids):  # [N, L] int
            x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
            x = self.ln_final(self.transformer(x))
            eot = ids.argmax(dim=-1)  # EOT has the largest id in the CLIP vocabulary
            x = x[torch.arange(x.shape[0], device=x.device), eot]
            return x @ self.text_projection.to(x.dtype)

    class ViCLIP(nn.Module):
        def __init__(self, c: ViCLIPConfig):
            super().__init__()
            self.config = c
            self.vision_encoder = VisionTower(c)
            self.text_encoder = TextTower(c)
            self.temp = nn.Parameter(torch.tensor(0.01))  # contrastive temperature; unused at inference

        def encode_vision(self, video):
            return self.vision_encoder(video)

        def encode_text(self, ids):
            return self.text_encoder(ids)

    _MODULES = {"ViCLIP": ViCLIP, "LayerNorm": LayerNorm}
    return _MODULES


_MODULES: dict | None = None


def _init_random(model, seed: int = 0) -> None:
    """CLIP-style initialisation from a fixed seed (random weights are for tests and demos only)."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, p in model.named_parameters():
            with torch.no_grad():
                if name == "temp":
                    p.fill_(0.01)
                elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.zero_()
                elif name.endswith("temporal_positional_embedding"):
                    p.zero_()  # as the original initialises it
                elif p.ndim == 1 or "embedding" in name:
                    nn.init.normal_(p, std=0.02 if "token_embedding" in name else p.shape[-1] ** -0.5)
                else:  # matrices, the conv weight and the projections: fan-in scaled
                    fan_in = p[0].numel() if name.endswith("weight") else p.shape[0]
                    nn.init.normal_(p, std=fan_in ** -0.5)


def build_viclip(config: ViCLIPConfig, device: str = "cpu", meta: bool = False):
    """An uninitialised (``meta=True``) or randomly initialised ViCLIP module."""
    import torch

    cls = _torch_modules()["ViCLIP"]
    if meta:
        with torch.device("meta"):
            return cls(config)
    model = cls(config)
    _init_random(model)
    return model.to(device)


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------

_ANCHOR = "vision_encoder.conv1.weight"


def read_checkpoint(path: Path) -> tuple[dict, dict[str, Any]]:
    """Read a state dict (see :func:`curate.weights.read_state_dict`: .pth/.pt/.bin, .safetensors or a
    directory) and the ``config.json`` beside it, if any (the -hf repos name their size there)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    hf_config: dict[str, Any] = {}
    if (folder / "config.json").is_file() and (path.is_dir() or path.suffix == ".safetensors"):
        try:
            hf_config = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError:
            hf_config = {}
    return read_state_dict(path, what="viclip"), hf_config


def strip_common_prefix(state: dict) -> tuple[dict, str]:
    """Remove a common prefix (``model.``, ``viclip.``, ``module.``...) found in front of
    ``vision_encoder.conv1.weight``. Returns the renamed dict and the prefix (``""`` if none)."""
    prefixes = {k[: -len(_ANCHOR)] for k in state if k.endswith(_ANCHOR)}
    if not prefixes:
        sample = ", ".join(list(state)[:6])
        raise CurateError(f"This does not look like a ViCLIP checkpoint: no key ends with {_ANCHOR!r} "
                          f"(first keys: {sample})")
    if len(prefixes) > 1:
        raise CurateError(f"Checkpoint holds several ViCLIP models (prefixes {sorted(prefixes)})")
    prefix = prefixes.pop()
    if not prefix:
        return state, ""
    return strip_prefix(state, prefix), prefix


def load_viclip_state_dict(model, state: dict, source: str = "checkpoint") -> list[str]:
    """Strict load with readable errors. Only ``temp`` (the training temperature) may be missing;
    returns the list of tolerated missing keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    tolerated = [k for k in missing if k == "temp"]
    missing = [k for k in missing if k not in tolerated]
    mismatched = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        def fmt(items):
            return ", ".join(items[:12]) + (f" ... (+{len(items) - 12} more)" if len(items) > 12 else "") or "none"

        raise CurateError(f"{source} does not match the ViCLIP model ({model.config.describe()}): "
                          f"missing keys: {fmt(missing)}; unexpected keys: {fmt(unexpected)}; "
                          f"shape mismatches: {fmt(mismatched)}. Pass the matching size=/config= or a ViCLIP checkpoint.")
    import torch

    state = dict(state)
    for k in tolerated:
        state[k] = torch.tensor(0.01)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                          strict=True, assign=True)
    return tolerated


# --------------------------------------------------------------------------------------------------
# tokenizer and preprocessing
# --------------------------------------------------------------------------------------------------

class ViCLIPTokenizer:
    """CLIP BPE (open_clip's ``bpe_simple_vocab_16e6.txt.gz``): SOT + BPE + EOT, zero-padded to the
    context length; longer captions are cut and EOT is forced at the last position."""

    def __init__(self, context_length: int = 32, bpe_path: str | None = None) -> None:
        import regex
        from open_clip.tokenizer import SimpleTokenizer, basic_clean, default_bpe

        self.context_length = context_length
        tok = SimpleTokenizer(bpe_path or default_bpe(), context_length=context_length, clean="lower")
        self.sot, self.eot = tok.sot_token_id, tok.eot_token_id  # 49406, 49407
        # open_clip spells the special tokens <start_of_text>/<end_of_text>; OpenAI's tokenizer, which ViCLIP
        # ships, spells them <|startoftext|>/<|endoftext|> and lets them through as single tokens. Use
        # OpenAI's spelling so that captions containing either string tokenise as the reference does.
        specials = {"<|startoftext|>": self.sot, "<|endoftext|>": self.eot}
        tok.encoder.update(specials)
        tok.cache = {t: t for t in specials}
        tok.pat = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
        # whitespace as the reference cleans it (regex \s+, which differs from str.split on a few characters)
        tok.clean_fn = lambda text: regex.sub(r"\s+", " ", basic_clean(text)).strip().lower()
        self._tok = tok

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.sot, *self._tok.encode(str(text)), self.eot]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            out[i, : len(ids)] = ids
        return out


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


# --------------------------------------------------------------------------------------------------
# the encoder
# --------------------------------------------------------------------------------------------------

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


def _is_bare_repo(spec: str) -> bool:
    """``org/repo`` (optionally ``hf-hub:``) that is not a local path: a hub repo without a file name."""
    s = spec.removeprefix("hf-hub:")
    if Path(spec).expanduser().exists() or s.startswith(("/", ".", "~", "http://", "https://", "file://")):
        return False
    parts = s.split("/")
    return len(parts) == 2 and all(parts)


def resolve_viclip_weights(spec: str) -> Path:
    """A local checkpoint path for ``spec`` (see :func:`curate.weights.resolve_weights`). A bare hub repo
    ``org/repo`` means its ``model.safetensors`` (the -hf layout; its ``config.json`` is fetched too when
    possible), except ``OpenGVLab/ViCLIP``, which means its ``ViClip-InternVid-10M-FLT.pth``."""
    what = f"viclip ({spec})"
    if not _is_bare_repo(spec):
        return resolve_weights(spec, what=what)
    repo = spec.removeprefix("hf-hub:")
    if repo.lower() == "opengvlab/viclip":
        return resolve_weights(DEFAULT_WEIGHTS["l"], what=what)
    path = resolve_weights(repo, filename="model.safetensors", what=what)
    try:  # only names the size; the shapes say the rest
        resolve_weights(f"{repo}/config.json", what=what)
    except WeightsUnavailable:
        pass
    return path
