"""The `clip4clip` encoder: CLIP4Clip (meanP) video embeddings on Hugging Face CLIP towers.

Model: a CLIP ViT (``CLIPVisionModelWithProjection``) embeds every sampled frame; a CLIP text tower
(``CLIPTextModelWithProjection``) embeds captions. Pooling is CLIP4Clip's parameter-free *meanP*
head, as in the Searchium-ai notebook: L2-normalise each frame's ``image_embeds``, average over the
frames of the clip, L2-normalise again. The score is the cosine of the video and caption vectors.

Weights (``weights=``):

- a Hugging Face id (default ``Searchium-ai/clip4clip-webvid150k``, CLIP4Clip trained on 150k WebVid
  pairs, released as a plain ``CLIPModel``) or a local directory in that layout (``config.json``,
  ``model.safetensors`` or ``pytorch_model.bin``, optional ``preprocessor_config.json`` and tokenizer
  files); fetched file by file through :func:`curate.weights.resolve_weights`, so ``CURATE_OFFLINE=1``
  only uses local paths and the hub cache;
- a checkpoint of the CLIP4Clip repository (``pytorch_model.bin.<epoch>``: ``clip.``-prefixed OpenAI
  CLIP names plus similarity-head tensors), as a local path, URL or ``org/repo/file``. The OpenAI names
  are mapped onto the HF modules (the mapping of transformers' ``convert_clip_original_pytorch_to_hf``)
  and the CLIP architecture is inferred from tensor shapes. Head tensors (``frame_position_embeddings``,
  ``transformerClip``, ``lstm_visual``, ``cross``, ``similarity_dense``) are ignored by meanP, with a log
  line; the seqTransf/seqLSTM/tightTransf heads are not implemented (``head=`` other than meanP raises);
- ``random``: randomly initialised towers (seed 0) from ``config=`` (a CLIPConfig JSON file or a
  directory holding one) or the default ViT-B/32 CLIPConfig; demos and tests only.

Loading is strict: a checkpoint that lacks a CLIP tensor (or carries unknown ones) is refused rather
than run with randomly initialised parts. ``torch.load`` always uses ``weights_only=True``.

Frames (``sampling=fps``, default): the notebook's 1-fps rule. The video fps is truncated to an
integer, the clip lasts ``ceil(n / fps)`` seconds and the indices are
``floor(arange(0, seconds * fps, fps / rate))`` (the first frame of each second for ``fps=1``), dropping
indices past the clip end. Unlike the notebook, at most ``max_frames`` (default 64; 0 = no cap) are
kept, chosen by CLIP4Clip's uniform ``linspace`` cut (``slice_framepos=2``), to bound memory on long
clips. ``sampling=uniform`` is CLIP4Clip's training/eval loader (``--max_frames 12 --slice_framepos
2``): the same 1-fps candidates cut to ``frames`` (default 12) by ``linspace``; short clips keep fewer
frames, as in CLIP4Clip (where the rest were masked). It equals ``sampling=fps max_frames=<frames>``.

Preprocessing per frame (uint8 RGB): resize the shorter side to 224 (bicubic, antialiased), center crop
224, ``/255``, normalise with the CLIP mean/std; the model's ``preprocessor_config.json`` values are
used where present. This reproduces transformers' ``CLIPImageProcessor`` on the same frames.

The package: ``sampling.py`` (which frames), ``preprocess.py`` (frames to pixel values), ``loading.py``
(weights onto the HF towers), ``tokenizer.py``, and here :class:`Clip4ClipEncoder`, the adapter the embed
stage calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from curate.encoders.base import Encoder, EncoderInfo, autocast, autocast_dtype, l2_normalize
from curate.encoders.clip4clip.loading import (
    infer_clip_config,
    load_hf_folder,
    load_repo_checkpoint,
    openai_to_hf_state_dict,
    read_clip_config,
)
from curate.encoders.clip4clip.preprocess import FramePreprocessor
from curate.encoders.clip4clip.sampling import linspace_cut, one_fps_indices
from curate.encoders.clip4clip.tokenizer import DEFAULT_TOKENIZER, bundled_tokenizer, has_tokenizer, load_tokenizer
from curate.errors import CurateError
from curate.weights import HF_WEIGHT_FILES, hub_folder, is_hub_repo, resolve_weights

__all__ = [
    "DEFAULT_TOKENIZER",
    "DEFAULT_WEIGHTS",
    "Clip4ClipEncoder",
    "FramePreprocessor",
    "bundled_tokenizer",
    "infer_clip_config",
    "linspace_cut",
    "one_fps_indices",
    "openai_to_hf_state_dict",
]

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "Searchium-ai/clip4clip-webvid150k"
HEADS = ("meanP", "seqLSTM", "seqTransf", "tightTransf")
FRAMES_PER_FORWARD = 256  # frames of many clips go through the vision tower together, this many at a time


class Clip4ClipEncoder(Encoder):
    name = "clip4clip"
    score_range = ("cosine of unit vectors (meanP video vs caption); for CLIP-B/32-style weights such as "
                   "Searchium-ai/clip4clip-webvid150k, matching pairs typically ~0.25-0.35 and unrelated "
                   "ones lower (an estimate from CLIP ViT-B/32 behaviour, not measured on this checkpoint)")

    def __init__(self, device: str | None = "auto", weights: str = DEFAULT_WEIGHTS, tokenizer: str | None = None,
                 fps: float | str = 1, max_frames: int | str = 64, sampling: str = "fps", frames: int | str = 12,
                 head: str = "meanP", precision: str = "auto", config: str | None = None,
                 **options: Any) -> None:
        super().__init__(device=device)
        if options:
            raise CurateError(f"Unknown clip4clip option(s): {', '.join(options)} (known: weights, tokenizer, fps, "
                              "max_frames, sampling, frames, head, precision, config)")
        head_l = str(head).strip()
        if head_l.lower() != "meanp":
            known = {h.lower(): h for h in HEADS}
            if head_l.lower() in known:
                raise CurateError(f"clip4clip head={known[head_l.lower()]} is not implemented; only head=meanP "
                                  "(parameter-free mean pooling) is. seqLSTM/seqTransf/tightTransf need their "
                                  "trained head tensors and are not supported by this encoder.")
            raise CurateError(f"Unknown clip4clip head {head!r}; the only supported head is meanP.")
        self.sampling = str(sampling).strip().lower()
        if self.sampling not in ("fps", "uniform"):
            raise CurateError(f"clip4clip sampling must be 'fps' or 'uniform', got {sampling!r}")
        try:
            self.sample_fps = float(fps)
            self.max_frames = int(max_frames)
            self.frames = int(frames)
        except ValueError as e:
            raise CurateError(f"clip4clip: fps must be a number and max_frames/frames integers ({e})") from e
        if not self.sample_fps > 0:
            raise CurateError(f"clip4clip fps must be positive, got {fps!r}")
        if self.max_frames < 0 or self.frames < 1:
            raise CurateError("clip4clip max_frames must be >= 0 (0 = no cap) and frames >= 1")
        self.autocast = autocast_dtype(precision, self.device, "clip4clip")
        self.precision = str(precision)
        self.extra: dict[str, Any] = {}
        self._load(str(weights).strip(), tokenizer, config)

    # -- loading --------------------------------------------------------------------------------
    def _load(self, weights: str, tokenizer: str | None, config: str | None) -> None:
        import torch

        what = f"clip4clip weights {weights}"
        pre_cfg: dict | None = None
        tok_default: str | None = None
        if weights == "random":
            cfg = read_clip_config(config)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

                self.vision = CLIPVisionModelWithProjection(cfg.vision_config).eval()
                self.text = CLIPTextModelWithProjection(cfg.text_config).eval()
            self.weights_desc, self.layout = "random", "random"
            tok_default = "bundled"
        else:
            if config is not None:
                raise CurateError("clip4clip config= only applies to weights=random (checkpoints carry their config)")
            if is_hub_repo(weights):
                folder = hub_folder(weights, required=("config.json",), any_of=HF_WEIGHT_FILES,
                                    optional=("preprocessor_config.json",), what=what)
            else:
                folder = resolve_weights(weights, what=what)
            if folder.is_dir():
                cfg, self.vision, self.text, pre_cfg, extra = load_hf_folder(folder)
                if is_hub_repo(weights):
                    tok_default = weights
                else:
                    tok_default = str(folder) if has_tokenizer(folder) else DEFAULT_TOKENIZER
                self.layout = "hf"
            else:
                cfg, self.vision, self.text, extra = load_repo_checkpoint(folder)
                tok_default = DEFAULT_TOKENIZER
                self.layout = "clip4clip-repo"
            self.extra.update(extra)
            self.weights_desc = weights
        self.config = cfg
        self.tokenizer_desc = str(tokenizer or tok_default)
        self.tokenizer = load_tokenizer(self.tokenizer_desc)
        tcfg = cfg.text_config
        if len(self.tokenizer) > tcfg.vocab_size:
            raise CurateError(f"tokenizer {self.tokenizer_desc} has {len(self.tokenizer)} tokens but the text tower "
                              f"only {tcfg.vocab_size}; pass the tokenizer that belongs to these weights")
        self.context = int(tcfg.max_position_embeddings)
        size = int(cfg.vision_config.image_size)
        self.pre = FramePreprocessor.from_config(pre_cfg, size) if pre_cfg else FramePreprocessor.for_size(size)
        if self.pre.output_size != size:
            log.warning("clip4clip: preprocessor output %d differs from the model's image_size %d",
                        self.pre.output_size, size)
        self.embed_dim = int(cfg.vision_config.projection_dim)
        self.vision.to(self.device)
        self.text.to(self.device)

    # -- Encoder API ----------------------------------------------------------------------------
    @property
    def info(self) -> EncoderInfo:
        vc = self.config.vision_config
        n = self.frames if self.sampling == "uniform" else self.max_frames
        return EncoderInfo(
            name="clip4clip",
            model=f"CLIP4Clip meanP (CLIP ViT, patch {vc.patch_size}, width {vc.hidden_size}, "
                  f"{vc.num_hidden_layers} layers, {vc.image_size}px)",
            weights=self.weights_desc, embed_dim=self.embed_dim, num_frames=n,
            frame_size=self.pre.output_size, video_emb_shape=(self.embed_dim,),
            extra={"pooling": "meanP: mean of L2-normalised frame image_embeds, re-normalised",
                   "sampling": (f"{self.sample_fps:g} fps (video fps truncated to int), "
                                + (f"linspace cut to <= {n} frames" if n else "no cap")),
                   "num_frames": "variable (at most num_frames; 0 = uncapped)",
                   "layout": self.layout, "tokenizer": self.tokenizer_desc, "context_length": self.context,
                   "preprocess": self.pre.describe(), "precision": str(self.autocast or "fp32"), **self.extra})

    def frame_indices(self, num_frames_in_clip: int, fps: float) -> list[int]:
        idx = one_fps_indices(num_frames_in_clip, fps, self.sample_fps)
        return linspace_cut(idx, self.frames if self.sampling == "uniform" else self.max_frames)

    def preprocess(self, frames: np.ndarray):
        return self.pre(frames)

    def _autocast(self):
        return autocast(self.autocast)

    def embed_frames(self, pixel_values) -> Any:
        """Per-frame ``image_embeds`` [N, D] (float32, not normalised) for preprocessed frames."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, int(pixel_values.shape[0]), FRAMES_PER_FORWARD):
                x = pixel_values[i:i + FRAMES_PER_FORWARD].to(self.device, non_blocking=True)
                with self._autocast():
                    out.append(self.vision(pixel_values=x).image_embeds.float())
        return torch.cat(out)

    def embed_video_batch(self, inputs: Sequence[Any]) -> np.ndarray:
        import torch

        if not len(inputs):
            return np.zeros((0, self.embed_dim), np.float32)
        counts = [int(x.shape[0]) for x in inputs]
        if min(counts) == 0:
            raise ValueError("a clip has no frames")
        with torch.inference_mode():
            feats = l2_normalize(self.embed_frames(torch.cat(list(inputs))))
            videos = torch.stack([l2_normalize(f.mean(0)) for f in torch.split(feats, counts)])
        return videos.cpu().numpy().astype(np.float32)

    def embed_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.context, return_tensors="pt")
        with torch.inference_mode(), self._autocast():
            t = self.text(input_ids=tok["input_ids"].to(self.device),
                          attention_mask=tok["attention_mask"].to(self.device)).text_embeds
        return l2_normalize(t.float()).cpu().numpy().astype(np.float32)

