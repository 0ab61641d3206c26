"""The AskVideos-VideoCLIP network: EVA ViT-g, the BLIP-2 image Q-Former and the video Q-Former.

Written for this project, inference only; parameter names follow the original checkpoints, so
``AskVideosModel.state_dict()`` keys are those of the public ``{'model': ...}`` files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from curate.encoders.askvideos.config import ACTIVATIONS, AskVideosConfig
from curate.encoders.base import l2_normalize
from curate.errors import CurateError

__all__ = ["AskVideosModel", "EvaViT", "FP32LayerNorm", "random_model"]


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
        self.act = ACTIVATIONS[act]()

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



def random_model(cfg: AskVideosConfig, image_size: int | None, seed: int = 0) -> AskVideosModel:
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

