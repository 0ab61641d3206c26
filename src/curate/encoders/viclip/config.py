"""ViCLIP sizes: :class:`ViCLIPConfig`, the L/14 and B/16 presets, ``config=`` files, and sizes read off a checkpoint."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from curate.errors import CurateError

__all__ = ["PRESETS", "ViCLIPConfig", "infer_config", "read_config_overrides"]


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

