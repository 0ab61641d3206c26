"""AskVideos-VideoCLIP sizes: :class:`AskVideosConfig`, read from a sizes file or off the checkpoint's tensors.

Every size but the attention head counts and the LayerNorm eps shows in some tensor shape, so loading
reads them from the checkpoint (:func:`infer_config`); ``config=<json>`` (:func:`read_config_file`) gives
the rest, or every size of a randomly initialised model. Head counts default to the ViT-g / BERT
conventions (:func:`fill_head_counts`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from curate.errors import CurateError

__all__ = ["ACTIVATIONS", "AskVideosConfig", "bert_overrides", "fill_head_counts", "infer_config", "read_config_file"]

log = logging.getLogger(__name__)

#: BERT ``hidden_act`` values the Q-Formers support -> module factory
ACTIVATIONS = {"gelu": lambda: nn.GELU(), "gelu_new": lambda: nn.GELU(approximate="tanh"), "relu": lambda: nn.ReLU()}


@dataclass(frozen=True)
class AskVideosConfig:
    """Sizes of every part. Defaults are the public v0.2 model; loading reads most of them off the checkpoint."""

    # EVA ViT-g
    vit_image_size: int = 224  # the grid the EVA position embedding was trained for
    patch_size: int = 14
    vit_width: int = 1408
    vit_depth: int = 39
    vit_heads: int = 16
    vit_mlp: int = 6144  # int(1408 * 4.3637)
    vit_eps: float = 1e-6
    ln_vision_eps: float = 1e-5
    # BERT (both Q-Formers use the bert-base-uncased config)
    hidden: int = 768
    heads: int = 12
    bert_eps: float = 1e-12
    hidden_act: str = "gelu"
    # image Q-Former
    qformer_layers: int = 12
    qformer_cross_layers: tuple[int, ...] = tuple(range(0, 12, 2))  # cross_attention_freq = 2
    qformer_intermediate: int = 3072
    num_query_tokens: int = 32
    # video Q-Former
    video_layers: int = 4
    video_cross_layers: tuple[int, ...] = (0, 1, 2, 3)  # cross_attention_freq = 1
    video_intermediate: int = 3072
    num_video_query_tokens: int = 32
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    max_frame_pos: int = 32
    # projections
    embed_dim: int = 1024

    def validate(self) -> None:
        for name, width, heads in (("EVA", self.vit_width, self.vit_heads), ("BERT", self.hidden, self.heads)):
            if heads <= 0 or width % heads:
                raise CurateError(
                    f"AskVideos: {name} width {width} is not divisible by {heads} attention heads; "
                    "give the head counts with config=<json> (eva_vit.num_heads, bert_config_json.num_attention_heads)."
                )
        if self.hidden_act not in ACTIVATIONS:
            raise CurateError(f"AskVideos: unsupported BERT hidden_act {self.hidden_act!r} (known: {sorted(ACTIVATIONS)}).")


def _every(freq: int, layers: int) -> tuple[int, ...]:
    return tuple(i for i in range(layers) if i % max(1, int(freq)) == 0)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a sizes file into ``AskVideosConfig`` field overrides.

    The format is the parity fixture's ``config.json``: sections ``model_from_config`` (the reference's
    ``from_config`` dict), ``eva_vit``, ``ln_vision``, ``bert_config_json``, ``image_qformer`` and
    ``video_qformer``; every key is optional. A plain BERT ``config.json`` is read as ``bert_config_json``.
    """
    try:
        raw = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as e:
        raise CurateError(f"AskVideos: cannot read config {path}: {e}") from e
    if "num_attention_heads" in raw or raw.get("model_type") == "bert":
        raw = {"bert_config_json": raw}
    out: dict[str, Any] = {}

    def take(section: Mapping[str, Any], key: str, name: str, conv=int) -> None:
        if section.get(key) is not None:
            out[name] = conv(section[key])

    mfc = raw.get("model_from_config") or {}
    take(mfc, "image_size", "vit_image_size")
    take(mfc, "num_query_token", "num_query_tokens")
    take(mfc, "max_frame_pos", "max_frame_pos")
    take(mfc, "num_video_query_token", "num_video_query_tokens")
    take(mfc, "clip_dim_size", "embed_dim")
    take(mfc, "num_videoq_hidden_layers", "video_layers")
    eva = raw.get("eva_vit") or {}
    take(eva, "img_size", "vit_image_size")
    take(eva, "patch_size", "patch_size")
    take(eva, "embed_dim", "vit_width")
    take(eva, "depth", "vit_depth")
    take(eva, "num_heads", "vit_heads")
    take(eva, "norm_layer_eps", "vit_eps", float)
    if eva.get("mlp_hidden") is not None:
        out["vit_mlp"] = int(eva["mlp_hidden"])
    elif eva.get("mlp_ratio") is not None:
        out["vit_mlp"] = int(out.get("vit_width", AskVideosConfig.vit_width) * float(eva["mlp_ratio"]))
    take(raw.get("ln_vision") or {}, "eps", "ln_vision_eps", float)
    bert = raw.get("bert_config_json") or raw.get("bert") or {}
    out.update(bert_overrides(bert))
    iq = raw.get("image_qformer") or {}
    take(iq, "num_hidden_layers", "qformer_layers")
    take(iq, "num_query_token", "num_query_tokens")
    vq = raw.get("video_qformer") or {}
    take(vq, "num_hidden_layers", "video_layers")
    take(vq, "num_query_token", "num_video_query_tokens")
    layers = out.get("qformer_layers", AskVideosConfig.qformer_layers)
    out["qformer_cross_layers"] = _every(iq.get("cross_attention_freq", 2), layers)
    vlayers = out.get("video_layers", AskVideosConfig.video_layers)
    out["video_cross_layers"] = _every(vq.get("cross_attention_freq", 1), vlayers)
    return out


def bert_overrides(bert: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, name, conv in (
        ("hidden_size", "hidden", int),
        ("num_attention_heads", "heads", int),
        ("layer_norm_eps", "bert_eps", float),
        ("hidden_act", "hidden_act", str),
        ("vocab_size", "vocab_size", int),
        ("max_position_embeddings", "max_position_embeddings", int),
    ):
        if bert.get(key) is not None:
            out[name] = conv(bert[key])
    if bert.get("intermediate_size") is not None:
        out["qformer_intermediate"] = out["video_intermediate"] = int(bert["intermediate_size"])
    if bert.get("position_embedding_type", "absolute") != "absolute":
        raise CurateError("AskVideos: only absolute BERT position embeddings are supported.")
    return out


def _count_layers(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for k in sd if (m := pat.match(k))]
    return max(found) + 1 if found else 0


def infer_config(sd: Mapping[str, torch.Tensor], base: AskVideosConfig) -> AskVideosConfig:
    """Read every size the tensors reveal (all but head counts and eps) and keep ``base`` for the rest."""
    c: dict[str, Any] = {}

    def shape(key: str) -> tuple[int, ...] | None:
        t = sd.get(key)
        return tuple(t.shape) if t is not None else None

    if s := shape("visual_encoder.patch_embed.proj.weight"):
        c["vit_width"], c["patch_size"] = s[0], s[-1]
    if n := _count_layers(sd, "visual_encoder.blocks."):
        c["vit_depth"] = n
    if s := shape("visual_encoder.blocks.0.mlp.fc1.weight"):
        c["vit_mlp"] = s[0]
    if s := shape("visual_encoder.pos_embed"):
        grid = math.isqrt(s[1] - 1)
        c["vit_image_size"] = grid * c.get("patch_size", base.patch_size)
    if s := shape("query_tokens"):
        c["num_query_tokens"], c["hidden"] = s[1], s[2]
    if s := shape("video_query_tokens"):
        c["num_video_query_tokens"], c["hidden"] = s[1], s[2]
    for module, name in (("Qformer", "qformer"), ("video_Qformer", "video")):  # image and video Q-Formers
        layer = f"{module}.bert.encoder.layer."
        if n := _count_layers(sd, layer):
            c[f"{name}_layers"] = n
            c[f"{name}_cross_layers"] = tuple(
                i for i in range(n) if f"{layer}{i}.crossattention.self.query.weight" in sd)
        if s := shape(f"{layer}0.intermediate_query.dense.weight"):
            c[f"{name}_intermediate"] = s[0]
    if s := shape("video_Qformer.bert.embeddings.word_embeddings.weight"):
        c["vocab_size"] = s[0]
    if s := shape("video_Qformer.bert.embeddings.position_embeddings.weight"):
        c["max_position_embeddings"] = s[0]
    if s := shape("video_frame_position_embedding.weight"):
        c["max_frame_pos"] = s[0]
    if s := shape("vision_proj.weight"):
        c["embed_dim"] = s[0]
    changed = {k: (getattr(base, k), v) for k, v in c.items() if getattr(base, k) != v}
    if changed:
        log.debug("AskVideos sizes read from the checkpoint: %s", changed)
    return replace(base, **c)



def fill_head_counts(cfg: AskVideosConfig, file_overrides: Mapping[str, Any]) -> AskVideosConfig:
    """Head counts are not in any tensor shape: take them from config, else the ViT-g / BERT conventions."""
    vit_heads = cfg.vit_heads if "vit_heads" in file_overrides else _conventional_heads(cfg.vit_width, (88, 64))
    heads = cfg.heads or _conventional_heads(cfg.hidden, (64,))
    return replace(cfg, vit_heads=vit_heads, heads=heads)


def _conventional_heads(width: int, head_dims: Sequence[int]) -> int:
    for d in head_dims:  # EVA ViT-g uses 88-dim heads (1408/16); BERT-base 64 (768/12)
        if width % d == 0:
            return width // d
    return 0  # validate() turns this into a message asking for config=

