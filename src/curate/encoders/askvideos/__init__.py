"""AskVideos-VideoCLIP: a Video-Qformer (Video-LLaMA lineage) that embeds 16 frames as a stack of query vectors.

The pipeline (see ``docs/encoders.md`` section 4) is

    frames [B,3,T,H,W] -> EVA ViT-g per frame -> ln_vision -> BLIP-2 image Q-Former (32 queries per frame)
    -> + frame position embedding -> video Q-Former over all T*32 frame queries (32 video queries)
    -> vision_proj -> L2-normalise each query                       => video embedding [Q, D]

    caption -> BERT-uncased tokens (max 320) -> video Q-Former's BERT, text only, bidirectional
    -> [CLS] -> text_proj -> L2-normalise                             => text embedding [D]

and the clip/caption score is the best query's cosine (BLIP-2 ITC). The package, in the order of that flow:

- ``config.py``: :class:`AskVideosConfig`, every size, read from ``config=`` and off the checkpoint's tensors;
- ``model.py``: the network (EVA ViT-g, image Q-Former, video Q-Former), written for this project with
  the original checkpoints' parameter names, so the public files load as is;
- ``loading.py``: the three public weight files, merged in the reference's order and loaded strictly;
- ``tokenizer.py``: BERT-uncased with BLIP-2's ``[DEC]`` token;
- this file: :class:`AskVideosEncoder`, the adapter the embed stage calls.

Weights: see ``loading.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from curate.encoders.askvideos.config import AskVideosConfig, fill_head_counts, infer_config, read_config_file
from curate.encoders.askvideos.loading import (
    DEFAULT_EVA_WEIGHTS,
    DEFAULT_QFORMER_WEIGHTS,
    DEFAULT_WEIGHTS,
    LoadReport,
    build_model,
    load_askvideos_state,
)
from curate.encoders.askvideos.model import AskVideosModel, random_model
from curate.encoders.askvideos.tokenizer import TEXT_MAX_LENGTH, load_tokenizer
from curate.encoders.base import Encoder, EncoderInfo
from curate.encoders.pixel_stats import CLIP_MEAN, CLIP_STD
from curate.errors import CurateError

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

DEFAULT_FRAMES = 16  # hard-coded in the reference's upload_video


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
            model = random_model(cfg, image_size)
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
            cfg = fill_head_counts(inferred, file_overrides)
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

