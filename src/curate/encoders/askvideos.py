"""AskVideos-VideoCLIP: a Video-Qformer (Video-LLaMA lineage) that embeds 16 frames as a stack of query vectors.

The pipeline (see ``docs/encoders.md`` section 4) is

    frames [B,3,T,H,W] -> EVA ViT-g per frame -> ln_vision -> BLIP-2 image Q-Former (32 queries per frame)
    -> + frame position embedding -> video Q-Former over all T*32 frame queries (32 video queries)
    -> vision_proj -> L2-normalise each query                       => video embedding [Q, D]

    caption -> BERT-uncased tokens (max 320) -> video Q-Former's BERT, text only, bidirectional
    -> [CLS] -> text_proj -> L2-normalise                             => text embedding [D]

and the clip/caption score is the best query's cosine (BLIP-2 ITC). The modules below are written for
this project, but their parameter names follow the original checkpoints, so the public files load as is.

Weights come in three public files, all read with ``torch.load(weights_only=True)``:

- ``eva_vit_g.pth`` (LAVIS): raw EVA state dict without a prefix (``blocks.0.attn.qkv.weight``);
- ``blip2_pretrained_flant5xxl.pth`` (LAVIS): ``{'model': {ln_vision.*, query_tokens, Qformer.*, ...}}``;
- ``askvideos_clip_v0.x.pth`` (AskVideos): ``{'model': {video_*, vision_proj.*, text_proj.*, ...}}``.

A single ``{'model': full_state_dict}`` file works too. They are merged in the order the reference loads
them (EVA, then BLIP-2, then AskVideos, later files win). Unlike the reference, which loads with
``strict=False`` and silently keeps random values for anything absent, loading stops with the list of
missing keys when any parameter would stay uninitialised.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curate.encoders.base import Encoder, EncoderInfo, l2_normalize
from curate.errors import CurateError, WeightsUnavailable
from curate.weights import is_offline, resolve_weights, weights_help

__all__ = [
    "DEFAULT_EVA_WEIGHTS",
    "DEFAULT_QFORMER_WEIGHTS",
    "DEFAULT_WEIGHTS",
    "AskVideosConfig",
    "AskVideosEncoder",
    "AskVideosModel",
    "load_askvideos_state",
]

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "AskYoutube/AskVideos-VideoCLIP-v0.2/askvideos_clip_v0.2.pth"
DEFAULT_EVA_WEIGHTS = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth"
DEFAULT_QFORMER_WEIGHTS = (
    "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/blip2_pretrained_flant5xxl.pth"
)
DEFAULT_TOKENIZER = "bert-base-uncased"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_MAX_LENGTH = 320  # hard-coded in the reference's embed_text_itc
DEFAULT_FRAMES = 16  # hard-coded in the reference's upload_video

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


# ---------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------


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
        if self.hidden_act not in _ACTIVATIONS:
            raise CurateError(f"AskVideos: unsupported BERT hidden_act {self.hidden_act!r} (known: {sorted(_ACTIVATIONS)}).")


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
    out.update(_bert_overrides(bert))
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


def _bert_overrides(bert: Mapping[str, Any]) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------------------------
# modules (parameter names follow the original checkpoints)
# ---------------------------------------------------------------------------------------------------------

_ACTIVATIONS = {"gelu": lambda: nn.GELU(), "gelu_new": lambda: nn.GELU(approximate="tanh"), "relu": lambda: nn.ReLU()}


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class _PatchEmbed(nn.Module):
    def __init__(self, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _EvaAttention(nn.Module):
    """EVA attention: one qkv matrix without bias, separate q and v biases, the k bias is zero."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        q, k, v = F.linear(x, self.qkv.weight, bias).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(_heads(q, self.heads), _heads(k, self.heads), _heads(v, self.heads))
        return self.proj(_merge_heads(out))


class _EvaMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()  # exact erf GELU, as nn.GELU() in EVA
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _EvaBlock(nn.Module):
    def __init__(self, cfg: AskVideosConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.vit_width, eps=cfg.vit_eps)
        self.attn = _EvaAttention(cfg.vit_width, cfg.vit_heads)
        self.norm2 = nn.LayerNorm(cfg.vit_width, eps=cfg.vit_eps)
        self.mlp = _EvaMlp(cfg.vit_width, cfg.vit_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaViT(nn.Module):
    """EVA ViT-g as BLIP-2 uses it: absolute position embedding, no relative bias, no layer scale, no final norm."""

    def __init__(self, cfg: AskVideosConfig, image_size: int) -> None:
        super().__init__()
        grid = image_size // cfg.patch_size
        self.patch_embed = _PatchEmbed(cfg.vit_width, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.vit_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, cfg.vit_width))
        self.blocks = nn.ModuleList(_EvaBlock(cfg) for _ in range(cfg.vit_depth))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        # under autocast the fp32 cls/pos tensors promote the residual stream to fp32, as in the reference
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back, as BLIP-2's ``ln_vision`` (safe under fp16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class _BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        context = x if context is None else context
        q = _heads(self.query(x), self.heads)
        k = _heads(self.key(context), self.heads)
        v = _heads(self.value(context), self.heads)
        return _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


class _AddNorm(nn.Module):
    """``LayerNorm(dense(h) + residual)``: BERT's SelfOutput / Output."""

    def __init__(self, d_in: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class _BertAttention(nn.Module):
    def __init__(self, cfg: AskVideosConfig, kv_width: int) -> None:
        super().__init__()
        self.self = _BertSelfAttention(cfg.hidden, cfg.heads, kv_width)
        self.output = _AddNorm(cfg.hidden, cfg.hidden, cfg.bert_eps)

    def forward(self, x, context=None, mask=None):
        return self.output(self.self(x, context, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int, act: str) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inner)
        self.act = _ACTIVATIONS[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class _QFormerLayer(nn.Module):
    """A Q-Former layer: self-attention, optional cross-attention for queries, separate query and text FFNs."""

    def __init__(self, cfg: AskVideosConfig, inner: int, cross_width: int | None, text: bool) -> None:
        super().__init__()
        self.attention = _BertAttention(cfg, cfg.hidden)
        if cross_width is not None:
            self.crossattention = _BertAttention(cfg, cross_width)
        else:
            self.crossattention = None
        if text:
            self.intermediate = _Intermediate(cfg.hidden, inner, cfg.hidden_act)
            self.output = _AddNorm(inner, cfg.hidden, cfg.bert_eps)
        self.intermediate_query = _Intermediate(cfg.hidden, inner, cfg.hidden_act)
        self.output_query = _AddNorm(inner, cfg.hidden, cfg.bert_eps)

    def forward_queries(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.attention(h)
        if self.crossattention is not None:
            h = self.crossattention(h, context)
        return self.output_query(self.intermediate_query(h), h)

    def forward_text(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.attention(h, mask=mask)
        return self.output(self.intermediate(h), h)


class _Embeddings(nn.Module):
    def __init__(self, cfg: AskVideosConfig, text: bool) -> None:
        super().__init__()
        if text:
            self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
            self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.bert_eps)

    def text(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions)[None])


class _Encoder(nn.Module):
    def __init__(self, layers: list[_QFormerLayer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class _Bert(nn.Module):
    def __init__(self, cfg: AskVideosConfig, layers: int, cross: Sequence[int], cross_width: int, inner: int,
                 text: bool) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg, text)
        self.encoder = _Encoder(
            [_QFormerLayer(cfg, inner, cross_width if i in cross else None, text) for i in range(layers)]
        )

    def queries(self, query_embeds: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Query-only pass: queries attend to each other and cross-attend to ``context`` (all positions valid)."""
        h = self.embeddings.LayerNorm(query_embeds)
        for layer in self.encoder.layer:
            h = layer.forward_queries(h, context)
        return h

    def text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text-only pass: bidirectional self-attention, text FFN, additive ``(1 - mask) * -10000`` padding mask."""
        h = self.embeddings.text(input_ids)
        mask = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -10000.0
        for layer in self.encoder.layer:
            h = layer.forward_text(h, mask)
        return h


class _QFormer(nn.Module):
    def __init__(self, bert: _Bert) -> None:
        super().__init__()
        self.bert = bert


class AskVideosModel(nn.Module):
    """The whole AskVideos-VideoCLIP network; ``state_dict()`` keys match the original ``{'model': ...}`` files."""

    def __init__(self, cfg: AskVideosConfig, image_size: int | None = None) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.image_size = int(image_size or cfg.vit_image_size)
        self.visual_encoder = EvaViT(cfg, self.image_size)
        self.ln_vision = FP32LayerNorm(cfg.vit_width, eps=cfg.ln_vision_eps)
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, cfg.hidden))
        self.Qformer = _QFormer(_Bert(cfg, cfg.qformer_layers, cfg.qformer_cross_layers, cfg.vit_width,
                                      cfg.qformer_intermediate, text=False))
        self.video_frame_position_embedding = nn.Embedding(cfg.max_frame_pos, cfg.hidden)
        self.video_query_tokens = nn.Parameter(torch.zeros(1, cfg.num_video_query_tokens, cfg.hidden))
        self.video_Qformer = _QFormer(_Bert(cfg, cfg.video_layers, cfg.video_cross_layers, cfg.hidden,
                                            cfg.video_intermediate, text=True))
        self.vision_proj = nn.Linear(cfg.hidden, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.hidden, cfg.embed_dim)

    # the steps are separate methods so that tests can compare each intermediate with the reference
    def vit_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[N,3,H,W]`` frames -> ``ln_vision(EVA(x))`` ``[N, 1 + grid^2, vit_width]``."""
        return self.ln_vision(self.visual_encoder(pixels))

    def frame_queries(self, vit_features: torch.Tensor) -> torch.Tensor:
        """Image Q-Former: ``[N, tokens, vit_width]`` -> ``[N, num_query_tokens, hidden]``."""
        queries = self.query_tokens.expand(vit_features.shape[0], -1, -1)
        return self.Qformer.bert.queries(queries, vit_features)

    def frame_hidden_state(self, frame_queries: torch.Tensor) -> torch.Tensor:
        """``[B, T, Q, hidden]`` -> add frame position t to every query of frame t -> ``[B, T*Q, hidden]`` (t-major)."""
        b, t, q, h = frame_queries.shape
        if t > self.cfg.max_frame_pos:
            raise CurateError(f"AskVideos takes at most {self.cfg.max_frame_pos} frames per clip, got {t}.")
        pos = self.video_frame_position_embedding.weight[:t].to(frame_queries.dtype)
        return (frame_queries + pos[None, :, None, :]).reshape(b, t * q, h)

    def video_hidden(self, frame_hidden_state: torch.Tensor) -> torch.Tensor:
        """Video Q-Former: ``[B, T*Q, hidden]`` -> ``last_hidden_state`` ``[B, num_video_query_tokens, hidden]``."""
        queries = self.video_query_tokens.expand(frame_hidden_state.shape[0], -1, -1)
        return self.video_Qformer.bert.queries(queries, frame_hidden_state)

    def encode_video(
        self, pixels: torch.Tensor, amp_dtype: torch.dtype | None = None, frame_chunk: int = 128
    ) -> torch.Tensor:
        """``[B,3,T,H,W]`` normalised pixels -> L2-normalised query embeddings ``[B, num_video_query_tokens, D]``.

        With ``amp_dtype`` the visual path (EVA and both Q-Formers) runs under autocast, as the reference's
        ``maybe_autocast``; the projection runs in float32 outside it, as in the reference demo.
        """
        b, _, t, _, _ = pixels.shape
        frames = pixels.transpose(1, 2).flatten(0, 1)  # b c t h w -> (b t) c h w
        amp = (torch.autocast(device_type=pixels.device.type, dtype=amp_dtype) if amp_dtype is not None
               else contextlib.nullcontext())
        with amp:
            per_frame = [self.frame_queries(self.vit_features(chunk)) for chunk in frames.split(frame_chunk)]
            queries = torch.cat(per_frame).reshape(b, t, *per_frame[0].shape[1:])
            hidden = self.video_hidden(self.frame_hidden_state(queries))
        return l2_normalize(self.vision_proj(hidden.float()))

    def text_cls(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[CLS] hidden state of the video Q-Former's text-only pass ``[N, hidden]``."""
        return self.video_Qformer.bert.text(input_ids, attention_mask)[:, 0]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids -> L2-normalised ``text_proj([CLS])`` ``[N, D]``."""
        return l2_normalize(self.text_proj(self.text_cls(input_ids, attention_mask)))


# ---------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:  # mmap needs the zip format; old-style pickles load without it
        if "mmap" not in str(e) and "zip" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _read_state_dict(path: Path, role: str) -> dict[str, torch.Tensor]:
    try:
        obj = _torch_load(path)
    except Exception as e:
        raise CurateError(
            f"AskVideos: cannot read {role} file {path} with torch.load(weights_only=True): {type(e).__name__}: {e}"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CurateError(f"AskVideos: {role} file {path} does not hold a state dict (or {{'model': state_dict}}).")
    return dict(obj)


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
    main_path = resolve_weights(str(weights), what="AskVideos-VideoCLIP (askvideos_clip_v0.x.pth)")
    main = _read_state_dict(main_path, "AskVideos")
    if eva_weights is None and _needs(main, ["visual_encoder."]):
        eva_weights = DEFAULT_EVA_WEIGHTS
    if qformer_weights is None and _needs(main, ["ln_vision.", "query_tokens", "Qformer."]):
        qformer_weights = DEFAULT_QFORMER_WEIGHTS
    layers: list[tuple[str, dict[str, torch.Tensor]]] = []
    if eva_weights is not None:
        path = resolve_weights(str(eva_weights), what="the EVA ViT-g image encoder (LAVIS eva_vit_g.pth)")
        raw = _read_state_dict(path, "EVA ViT-g")
        sd = {k if k.startswith("visual_encoder.") else "visual_encoder." + k: v for k, v in raw.items()}
        layers.append(("eva_weights", sd))
        report.sources["eva_weights"] = str(path)
    if qformer_weights is not None:
        path = resolve_weights(str(qformer_weights), what="the BLIP-2 Q-Former (LAVIS blip2_pretrained_flant5xxl.pth)")
        raw = _read_state_dict(path, "BLIP-2 Q-Former")
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


def _random_model(cfg: AskVideosConfig, image_size: int | None, seed: int = 0) -> AskVideosModel:
    """Randomly initialised model for demos without weights: BERT-style N(0, 0.02), deterministic per seed."""
    with torch.device("meta"):
        model = AskVideosModel(cfg, image_size)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, nn.LayerNorm):
                    p.fill_(1.0 if name == "weight" else 0.0)
                elif name.endswith("bias"):  # Linear/Conv biases and EVA's q_bias / v_bias
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


# ---------------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------------


def _fallback_vocab() -> list[str]:
    """A character-level BERT-uncased-shaped vocabulary for random-weight demos without the real one."""
    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    return specials + chars + ["##" + c for c in chars]


def load_tokenizer(spec: str | None, *, allow_fallback: bool = False):
    """``BertTokenizer`` (lower case) plus the ``[DEC]`` bos token, as BLIP-2's ``init_tokenizer``.

    ``spec`` is a local folder or a hub id (default ``bert-base-uncased``); offline mode only reads caches.
    Returns ``(tokenizer, bert_config_overrides, description)``; the overrides come from a ``config.json``
    in a local folder (the reference reads BertConfig from the same name as the tokenizer).
    """
    from transformers import BertTokenizer

    spec = str(spec or DEFAULT_TOKENIZER)
    local = Path(spec).expanduser()
    overrides: dict[str, Any] = {}
    try:
        if local.exists():
            tok = BertTokenizer.from_pretrained(str(local), do_lower_case=True)
            if (local / "config.json").is_file():
                overrides = _bert_overrides(json.loads((local / "config.json").read_text()))
        else:
            kwargs = {"local_files_only": True} if is_offline() else {}
            tok = BertTokenizer.from_pretrained(spec, do_lower_case=True, **kwargs)
        if tok.vocab_size <= len(tok.all_special_tokens) + 1:
            # transformers 5 returns a special-tokens-only tokenizer instead of failing when vocab.txt is absent
            raise FileNotFoundError(f"no vocab.txt found for {spec!r} ({tok.vocab_size} tokens)")
        desc = spec
    except Exception as e:
        if not allow_fallback:
            raise WeightsUnavailable(
                f"AskVideos: could not load the BERT tokenizer {spec!r} ({type(e).__name__}: {e}). "
                "Pass tokenizer=/path/to/bert-base-uncased (a folder with vocab.txt). " + weights_help("the tokenizer")
            ) from e
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="curate-askvideos-vocab-"))
        (folder / "vocab.txt").write_text("\n".join(_fallback_vocab()) + "\n")
        tok = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
        desc = "built-in character vocabulary (random weights only)"
        warnings.warn(f"AskVideos: tokenizer {spec!r} unavailable ({type(e).__name__}); random-weight demo uses "
                      "a character-level vocabulary.", stacklevel=3)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    return tok, overrides, desc


# ---------------------------------------------------------------------------------------------------------
# the encoder
# ---------------------------------------------------------------------------------------------------------


class AskVideosEncoder(Encoder):
    """AskVideos-VideoCLIP as a curate encoder: 16 frames -> ``[32, 1024]`` query stack; caption -> ``[1024]``.

    Options (all strings are accepted, as from ``-o key=value``):

    - ``weights``: AskVideos checkpoint (hub id, URL or path; default v0.2) or a full ``{'model': ...}`` file,
      or ``random``;
    - ``eva_weights`` / ``qformer_weights``: the LAVIS EVA ViT-g and BLIP-2 Q-Former files (fetched only if
      ``weights`` lacks those parts);
    - ``tokenizer``: BERT-uncased folder or hub id; ``config``: JSON with sizes the tensors do not reveal
      (head counts) or the sizes of a random model;
    - ``frames`` (16), ``image_size`` (the checkpoint's, 224), ``precision`` (auto|fp32|fp16|bf16).
    """

    name = "askvideos"
    score_range = (
        "BLIP-2 ITC score: the best of the 32 query cosines with the caption, in [-1, 1], no temperature. "
        "Estimate (not measured on the public weights): matching clip/caption pairs ~0.3-0.5, unrelated ~0.05-0.25; "
        "the max over queries makes it higher than a single-vector cosine for the same pair."
    )

    def __init__(self, device: str | None = "auto", **options: Any) -> None:
        super().__init__(device=device, **options)
        self.frames = int(options.get("frames", DEFAULT_FRAMES))
        if self.frames < 1:
            raise CurateError("AskVideos: frames must be >= 1.")
        weights = str(options.get("weights") or DEFAULT_WEIGHTS)
        self.random = weights.strip().lower() == "random"
        image_size = options.get("image_size")
        image_size = int(image_size) if image_size not in (None, "", "auto") else None

        base = AskVideosConfig()
        config_path = options.get("config")
        file_overrides = read_config_file(config_path) if config_path else {}
        if self.random:
            self.tokenizer, tok_overrides, self.tokenizer_desc = load_tokenizer(
                options.get("tokenizer"), allow_fallback=True)
            cfg = replace(base, **{**tok_overrides, **file_overrides})
            cfg = replace(cfg, vocab_size=max(cfg.vocab_size, self.tokenizer.vocab_size))
            model = _random_model(cfg, image_size)
            self.load_report = LoadReport(sources={"weights": "random"})
        else:
            eva = options.get("eva_weights") or None
            qformer = options.get("qformer_weights") or None
            # the tokenizer first: it is small, so a missing one fails before gigabytes are read
            self.tokenizer, tok_overrides, self.tokenizer_desc = load_tokenizer(options.get("tokenizer"))
            state, report = load_askvideos_state(weights, eva, qformer)
            cfg = replace(base, **{**tok_overrides, **file_overrides})
            if "heads" not in tok_overrides and "heads" not in file_overrides:
                cfg = replace(cfg, heads=0)  # decided below, after the width is known
            inferred = infer_config(state, cfg)
            cfg = _fill_head_counts(inferred, file_overrides)
            if "video_layers" in file_overrides and file_overrides["video_layers"] != cfg.video_layers:
                log.warning("AskVideos: config says %d video Q-Former layers, the checkpoint has %d; using the "
                            "checkpoint.", file_overrides["video_layers"], cfg.video_layers)
            if self.tokenizer.vocab_size > cfg.vocab_size:
                raise CurateError(
                    f"AskVideos: the tokenizer has {self.tokenizer.vocab_size} word pieces but the checkpoint's "
                    f"word embeddings have {cfg.vocab_size}; pass the tokenizer the model was trained with."
                )
            model = build_model(state, cfg, image_size, report)
            self.load_report = report
            log.info("AskVideos loaded: %s", report.summary())
        self.cfg = cfg
        if self.frames > cfg.max_frame_pos:
            raise CurateError(f"AskVideos: frames={self.frames} exceeds the {cfg.max_frame_pos} frame positions.")
        self.image_size = model.image_size
        self.weights_spec = "random" if self.random else weights
        self.precision, self.amp_dtype = _precision(options.get("precision", "auto"), self.device)
        model.eval().requires_grad_(False)
        model = model.to(self.device)
        if self.amp_dtype is not None:  # as the reference: EVA conv/linear weights in half, run under autocast
            for m in model.visual_encoder.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    m.to(self.amp_dtype)
        self.model = model
        self._mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1, 1)
        self._std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1, 1)

    # -- what the embed stage calls ---------------------------------------------------------------------
    @property
    def info(self) -> EncoderInfo:
        c = self.cfg
        return EncoderInfo(
            name=self.name,
            model=(f"AskVideos-VideoCLIP (EVA ViT-g {c.vit_depth}x{c.vit_width} + BLIP-2 Q-Former "
                   f"{c.qformer_layers}L + video Q-Former {c.video_layers}L)"),
            weights=self.weights_spec,
            embed_dim=c.embed_dim,
            num_frames=self.frames,
            frame_size=self.image_size,
            video_emb_shape=(c.num_video_query_tokens, c.embed_dim),
            extra={
                "similarity": "max over query cosines (BLIP-2 ITC)",
                "tokenizer": self.tokenizer_desc,
                "text_max_length": TEXT_MAX_LENGTH,
                "precision": self.precision,
                "video_qformer_layers": c.video_layers,
                "load": self.load_report.summary(),
            },
        )

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """Squash every frame to ``image_size`` square (decord resizes in its decoder: no crop, aspect not kept)."""
        return (self.image_size, self.image_size)

    def frame_indices(self, num_frames_in_clip: int, fps: float) -> list[int]:
        """``arange(0, n, n/16)``: uniform from frame 0; a clip shorter than 16 frames gives all its frames."""
        n = int(num_frames_in_clip)
        if n <= 0:
            raise ValueError("clip has no frames")
        k = min(self.frames, n)
        return np.arange(0, n, n / k).astype(int)[:k].tolist()

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB ``[T,H,W,3]`` -> float32 ``[3,T,S,S]``: /255, CLIP mean/std (frames resized if not SxS)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [T,H,W,3], got {frames.shape}")
        s = self.image_size
        if frames.shape[1:3] != (s, s):
            from PIL import Image

            frames = np.stack([np.asarray(Image.fromarray(f).resize((s, s), Image.BILINEAR)) for f in frames])
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.uint8)).float().permute(3, 0, 1, 2) / 255.0
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def embed_video_batch(self, inputs: Sequence[torch.Tensor]) -> np.ndarray:
        """Clips ``[3,T,S,S]`` -> ``[B, Q, D]`` float32, each query L2-normalised (clips grouped by frame count)."""
        out: list[torch.Tensor | None] = [None] * len(inputs)
        groups: dict[int, list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(int(x.shape[1]), []).append(i)
        for idx in groups.values():
            pixels = torch.stack([torch.as_tensor(inputs[i]) for i in idx]).to(self.device, torch.float32)
            emb = self.model.encode_video(pixels, self.amp_dtype)
            for i, e in zip(idx, emb.float().cpu()):
                out[i] = e
        if not out:
            return np.zeros((0, self.cfg.num_video_query_tokens, self.cfg.embed_dim), np.float32)
        return torch.stack(out).numpy().astype(np.float32, copy=False)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask ``[N, 320]`` exactly as the reference (max_length padding, truncation)."""
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    @torch.inference_mode()
    def embed_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> ``[N, D]`` float32, L2-normalised (text path in float32, as the reference)."""
        if len(texts) == 0:
            return np.zeros((0, self.cfg.embed_dim), np.float32)
        ids, mask = self.tokenize(texts)
        if int(ids.max()) >= self.cfg.vocab_size:
            raise CurateError("AskVideos: token id beyond the checkpoint's vocabulary; wrong tokenizer?")
        emb = self.model.encode_text(ids.to(self.device), mask.to(self.device))
        return emb.float().cpu().numpy()

    def similarity(self, video: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Best query's cosine per (clip, caption) pair: ``max_q <v_q, t>`` (BLIP-2 ITC, no temperature)."""
        return super().similarity(video, text)


def _fill_head_counts(cfg: AskVideosConfig, file_overrides: Mapping[str, Any]) -> AskVideosConfig:
    """Head counts are not in any tensor shape: take them from config, else the ViT-g / BERT conventions."""
    vit_heads = cfg.vit_heads if "vit_heads" in file_overrides else _conventional_heads(cfg.vit_width, (88, 64))
    heads = cfg.heads or _conventional_heads(cfg.hidden, (64,))
    return replace(cfg, vit_heads=vit_heads, heads=heads)


def _conventional_heads(width: int, head_dims: Sequence[int]) -> int:
    for d in head_dims:  # EVA ViT-g uses 88-dim heads (1408/16); BERT-base 64 (768/12)
        if width % d == 0:
            return width // d
    return 0  # validate() turns this into a message asking for config=


def _precision(value: Any, device: str) -> tuple[str, torch.dtype | None]:
    value = str(value or "auto").lower()
    if value not in {"auto", "fp32", "fp16", "bf16"}:
        raise CurateError(f"AskVideos: precision must be auto, fp32, fp16 or bf16, not {value!r}.")
    on_cuda = torch.device(device).type == "cuda"
    if not on_cuda:
        if value in {"fp16", "bf16"}:
            log.warning("AskVideos: precision=%s needs CUDA; running in fp32 on %s.", value, device)
        return "fp32", None
    if value == "auto":
        value = "fp16"  # the reference: EVA weights in fp16, visual path under CUDA fp16 autocast
    return value, {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[value]

