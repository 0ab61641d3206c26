"""The ViCLIP network (vision tower with joint spatiotemporal attention, CLIP text tower), inference only.

Parameter names follow the original module tree, so the public checkpoints load strictly. The classes sit at
module level and this module imports torch: the plugin's factory (:mod:`curate.default_plugins.viclip`)
imports this package only when a ViCLIP encoder is created, so listing plugins never imports torch.

LayerNorm and QuickGELU are the same layers as open_clip's ``LayerNormFp32`` and ``QuickGELU``; they are
kept here because importing open_clip costs about 30 s more than torch alone on a loaded 2-core machine
(47 s against 14 s), which every ViCLIP load would pay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from curate.encoders.viclip.config import ViCLIPConfig
from curate.errors import CurateError

__all__ = ["ViCLIP", "build_viclip"]


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (as CLIP's text tower does)."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    """The GELU approximation CLIP was trained with."""

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
    """Pre-norm attention and MLP, each added back to its input (CLIP's block)."""

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
    """``layers`` residual attention blocks (``resblocks``, as the checkpoints name them)."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, causal) for _ in range(layers)])

    def forward(self, x):
        for blk in self.resblocks:
            x = blk(x)
        return x


class VisionTower(nn.Module):
    """Tubelet patches of all frames, one joint spatiotemporal ViT, the class token projected: ``[B, T, 3, S, S]`` -> ``[B, D]``."""

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
    """CLIP's causal text transformer, the end-of-text token projected: ``[N, L]`` ids -> ``[N, D]``."""

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
    """Both towers under the original module names (``vision_encoder``, ``text_encoder``, ``temp``)."""

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


def _init_random(model, seed: int = 0) -> None:
    """CLIP-style initialisation from a fixed seed (random weights are for tests and demos only)."""
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
    if meta:
        with torch.device("meta"):
            return ViCLIP(config)
    model = ViCLIP(config)
    _init_random(model)
    return model.to(device)
