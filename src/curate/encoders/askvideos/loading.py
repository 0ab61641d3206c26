"""Loading AskVideos-VideoCLIP weights: three public files merged as the reference merges them, strictly.

Weights come in three public files, all read with :func:`curate.weights.read_state_dict`
(``torch.load(weights_only=True)``):

- ``eva_vit_g.pth`` (LAVIS): raw EVA state dict without a prefix (``blocks.0.attn.qkv.weight``);
- ``blip2_pretrained_flant5xxl.pth`` (LAVIS): ``{'model': {ln_vision.*, query_tokens, Qformer.*, ...}}``;
- ``askvideos_clip_v0.x.pth`` (AskVideos): ``{'model': {video_*, vision_proj.*, text_proj.*, ...}}``.

A single ``{'model': full_state_dict}`` file works too. They are merged in the order the reference loads
them (EVA, then BLIP-2, then AskVideos, later files win). Unlike the reference, which loads with
``strict=False`` and silently keeps random values for anything absent, loading stops with the list of
missing keys when any parameter would stay uninitialised.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from curate.encoders.askvideos.config import AskVideosConfig
from curate.encoders.askvideos.model import AskVideosModel
from curate.errors import CurateError
from curate.weights import add_prefix, read_state_dict, resolve_weights

__all__ = ["DEFAULT_EVA_WEIGHTS", "DEFAULT_QFORMER_WEIGHTS", "DEFAULT_WEIGHTS", "KNOWN_UNUSED", "LoadReport",
           "build_model", "load_askvideos_state"]

DEFAULT_WEIGHTS = "AskYoutube/AskVideos-VideoCLIP-v0.2/askvideos_clip_v0.2.pth"
DEFAULT_EVA_WEIGHTS = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth"
DEFAULT_QFORMER_WEIGHTS = (
    "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/blip2_pretrained_flant5xxl.pth"
)


# Keys the checkpoints carry that this encoder deliberately does not use. The reference either deletes the
# modules (image Q-Former text side), never calls them on the ITC path (MLM head, temperature) or
# recomputes them (position_ids buffers).
KNOWN_UNUSED = [
    (re.compile(r"(^|\.)position_ids$"), "position-id buffer (recomputed)"),
    (re.compile(r"^temperature_parameter$"), "temperature (unused by ITC)"),
    (re.compile(r"^video_Qformer\.cls\."), "video Q-Former MLM head (not on the ITC path)"),
    (re.compile(r"^video_Qformer\.bert\.pooler\."), "BERT pooler (not on the ITC path)"),
    (re.compile(r"^Qformer\.cls\."), "image Q-Former MLM head (deleted by AskVideos)"),
    (re.compile(r"^Qformer\.bert\.pooler\."), "BERT pooler (not on the ITC path)"),
    (re.compile(r"^Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\."),
     "image Q-Former word/position embeddings (deleted by AskVideos)"),
    (re.compile(r"^Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\."),
     "image Q-Former text FFN (deleted by AskVideos)"),
    (re.compile(r"^visual_encoder\.(norm|fc_norm|head|lm_head)\."), "EVA final norm/head (not used by BLIP-2)"),
    (re.compile(r"^visual_encoder\.mask_token$"), "EVA mask token (pre-training only)"),
]

# Parameter groups, for messages that say which file should have supplied a missing key.
_PARTS = [
    ("visual_encoder.", "EVA ViT-g image encoder", "eva_weights"),
    ("ln_vision.", "ln_vision", "qformer_weights"),
    ("query_tokens", "image Q-Former query tokens", "qformer_weights"),
    ("Qformer.", "BLIP-2 image Q-Former", "qformer_weights"),
    ("video_frame_position_embedding.", "frame position embedding", "weights"),
    ("video_query_tokens", "video query tokens", "weights"),
    ("video_Qformer.", "video Q-Former", "weights"),
    ("vision_proj.", "vision_proj", "weights"),
    ("text_proj.", "text_proj", "weights"),
]
# What the reference takes from the BLIP-2 file: load_from_pretrained runs before the video side and
# the projections exist, so the file's own vision_proj/text_proj/itm_head/temp never reach the model.
_IMAGE_SIDE = ("visual_encoder.", "ln_vision.", "query_tokens", "Qformer.")


def _known_unused(key: str) -> str | None:
    for pattern, why in KNOWN_UNUSED:
        if pattern.search(key):
            return why
    return None


def _part_of(key: str) -> tuple[str, str]:
    for prefix, name, option in _PARTS:
        if key.startswith(prefix):
            return name, option
    return key, "weights"



@dataclass
class LoadReport:
    """What a load took from where, and what it left out."""

    sources: dict[str, str] = field(default_factory=dict)  # role -> path
    taken: dict[str, int] = field(default_factory=dict)  # role -> number of keys that reached the model
    ignored: dict[str, str] = field(default_factory=dict)  # key -> why (known-unused or wrong file)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"sources": self.sources, "keys_loaded": self.taken, "keys_ignored": len(self.ignored),
                "unexpected_keys": self.unexpected}


def _needs(sd: Mapping[str, torch.Tensor], prefixes: Sequence[str]) -> bool:
    """True when ``sd`` lacks the parameters of a part (its prefixes hold no key other than known-unused ones)."""
    return not any(k.startswith(p) and not _known_unused(k) for k in sd for p in prefixes)


def load_askvideos_state(
    weights: str | Path,
    eva_weights: str | Path | None = None,
    qformer_weights: str | Path | None = None,
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Resolve and merge the checkpoint files in the reference's order (EVA < BLIP-2 < AskVideos).

    ``eva_weights`` / ``qformer_weights`` left as None are fetched (LAVIS URLs) only when ``weights`` does not
    already contain that part, so a full ``{'model': ...}`` file needs nothing else.
    """
    report = LoadReport()
    main_what = "AskVideos-VideoCLIP (askvideos_clip_v0.x.pth)"
    main_path = resolve_weights(str(weights), what=main_what)
    main = read_state_dict(main_path, what=main_what)
    if eva_weights is None and _needs(main, ["visual_encoder."]):
        eva_weights = DEFAULT_EVA_WEIGHTS
    if qformer_weights is None and _needs(main, ["ln_vision.", "query_tokens", "Qformer."]):
        qformer_weights = DEFAULT_QFORMER_WEIGHTS
    layers: list[tuple[str, dict[str, torch.Tensor]]] = []
    if eva_weights is not None:
        what = "the EVA ViT-g image encoder (LAVIS eva_vit_g.pth)"
        path = resolve_weights(str(eva_weights), what=what)
        sd = add_prefix(read_state_dict(path, what=what), "visual_encoder.")
        layers.append(("eva_weights", sd))
        report.sources["eva_weights"] = str(path)
    if qformer_weights is not None:
        what = "the BLIP-2 Q-Former (LAVIS blip2_pretrained_flant5xxl.pth)"
        path = resolve_weights(str(qformer_weights), what=what)
        raw = read_state_dict(path, what=what)
        sd = {}
        for k, v in raw.items():
            if k.startswith(_IMAGE_SIDE):
                sd[k] = v
            else:  # the reference loads this file before these modules exist
                report.ignored[f"qformer_weights:{k}"] = "not an image-side key (the reference never loads it)"
        layers.append(("qformer_weights", sd))
        report.sources["qformer_weights"] = str(path)
    layers.append(("weights", main))
    report.sources["weights"] = str(main_path)
    merged: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for role, sd in layers:
        for k, v in sd.items():
            merged[k] = v
            origin[k] = role
    for k in list(merged):
        if why := _known_unused(k):
            report.ignored[k] = why
            del merged[k]
    for k in merged:
        report.taken[origin[k]] = report.taken.get(origin[k], 0) + 1
    return merged, report


def _interpolate_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubic resize of EVA's patch position grid (CLS kept), as the reference does for another image size."""
    old = math.isqrt(pos.shape[1] - 1)
    if old == grid:
        return pos
    cls, patches = pos[:, :1], pos[:, 1:].float()
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat((cls.float(), patches.permute(0, 2, 3, 1).flatten(1, 2)), dim=1).to(pos.dtype)


def build_model(
    state: dict[str, torch.Tensor], cfg: AskVideosConfig, image_size: int | None, report: LoadReport
) -> AskVideosModel:
    """Build the model at the checkpoint's sizes and load ``state``; refuse if any parameter would stay random."""
    image_size = int(image_size or cfg.vit_image_size)
    with torch.device("meta"):
        model = AskVideosModel(cfg, image_size)
    expected = model.state_dict()
    if "visual_encoder.pos_embed" in state:
        state["visual_encoder.pos_embed"] = _interpolate_pos_embed(
            state["visual_encoder.pos_embed"], image_size // cfg.patch_size
        )
    missing = [k for k in expected if k not in state]
    report.unexpected = sorted(k for k in state if k not in expected)
    if report.unexpected:
        warnings.warn(
            f"AskVideos checkpoint has {len(report.unexpected)} keys this model does not use: "
            + ", ".join(report.unexpected[:10]) + (" ..." if len(report.unexpected) > 10 else ""),
            stacklevel=3,
        )
    if missing:
        raise CurateError(_missing_message(missing, report))
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
           for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise CurateError("AskVideos: checkpoint shapes do not fit together:\n  " + "\n  ".join(bad[:20]))
    model.load_state_dict({k: state[k] for k in expected}, strict=True, assign=True)
    return model.float()


def _missing_message(missing: list[str], report: LoadReport) -> str:
    by_part: dict[tuple[str, str], list[str]] = {}
    for k in missing:
        by_part.setdefault(_part_of(k), []).append(k)
    lines = [(f"AskVideos: {len(missing)} model parameters are in none of the checkpoint files, so they would "
              "stay randomly initialised (the reference loads with strict=False and runs anyway; curate refuses).")]
    for (part, option), keys in by_part.items():
        shown = ", ".join(keys[:6]) + (f", ... (+{len(keys) - 6} more)" if len(keys) > 6 else "")
        lines.append(f"  {part} [{len(keys)} missing; expected from {option}=]: {shown}")
    lines.append("  files read: " + ", ".join(f"{r}={p}" for r, p in report.sources.items()))
    lines.append("Pass the file that holds them (weights=, eva_weights=, qformer_weights=) or a complete "
                 "{'model': state_dict} file.")
    return "\n".join(lines)

