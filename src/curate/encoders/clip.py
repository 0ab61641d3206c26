"""The `clip` encoder: open_clip image tower per frame (video_features style), mean-pooled per clip.

Frames: N uniform per clip (default 8). Each frame: resize shorter side to the model's input size
(bicubic, antialiased), center crop, /255, the model's mean/std (OpenAI CLIP constants for OpenAI
weights). Per-frame embeddings are L2-normalised, averaged, and re-normalised; captions go through
the text tower and are L2-normalised.

``weights`` may be an open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``...), a Hugging Face
hub id (``org/repo``, an open_clip model repo), a local checkpoint (open_clip state dict, an OpenAI
TorchScript/state-dict ``.pt``, or safetensors), or ``random`` (randomly initialised; tests and
offline demos only, recorded as ``weights: random`` in the dataset card).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate.encoders.base import Encoder, EncoderInfo, autocast, autocast_dtype, l2_normalize
from curate.encoders.pixel_stats import CLIP_MEAN, CLIP_STD
from curate.errors import CurateError, WeightsUnavailable
from curate.weights import is_offline, read_state_dict, resolve_weights, weights_help

OPENAI_NAMES = {  # video_features / openai-clip names -> open_clip architectures
    "RN50": "RN50", "RN101": "RN101", "RN50x4": "RN50x4", "RN50x16": "RN50x16", "RN50x64": "RN50x64",
    "ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14", "ViT-L/14@336px": "ViT-L-14-336",
}
#: entries of OpenAI's CLIP files that are model settings, not parameters
OPENAI_SETTINGS = frozenset({"input_resolution", "context_length", "vocab_size"})


def register_model_config(path: str | Path) -> str:
    """Register an open_clip architecture from a JSON config file; returns its name (the file stem)."""
    import open_clip

    p = Path(path)
    if not p.is_file():
        raise CurateError(f"model_config {str(p)!r} does not exist")
    json.loads(p.read_text())  # fail early with a JSON error
    open_clip.add_model_config(p)
    return p.stem


def load_open_clip(model: str, weights: str, device: str, model_config: str | None = None):
    """Build an open_clip model and its tokenizer; weights resolved as described in the module docstring."""
    import open_clip
    import torch

    if model_config:
        model = register_model_config(model_config)
    model = OPENAI_NAMES.get(model, model)
    if weights.startswith("hf-hub:") or (weights.count("/") == 1 and not Path(weights).exists()
                                         and weights not in open_clip.list_pretrained_tags_by_model(model)):
        hub = weights if weights.startswith("hf-hub:") else f"hf-hub:{weights}"
        try:
            m, _, _ = open_clip.create_model_and_transforms(hub, device=device)
            return m.eval(), open_clip.get_tokenizer(hub), hub
        except Exception as e:
            raise WeightsUnavailable(f"open_clip could not load {hub} ({type(e).__name__}: {e}). "
                                     + weights_help(f"clip {hub}")) from e
    if model not in open_clip.list_models():
        raise CurateError(f"Unknown open_clip architecture {model!r}. Known: see open_clip.list_models(), "
                          "or pass model_config=path.json for a custom one.")
    if weights == "random":
        torch.manual_seed(0)  # reproducible: two runs with random weights give the same scores
        m = open_clip.create_model(model, pretrained=None, device=device)
        return m.eval(), open_clip.get_tokenizer(model), "random"
    tags = open_clip.list_pretrained_tags_by_model(model)
    if weights in tags:
        if is_offline():
            import os
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            m = open_clip.create_model(model, pretrained=weights, device=device)
        except Exception as e:
            raise WeightsUnavailable(
                f"Could not download open_clip weights {model}/{weights} ({type(e).__name__}: {str(e)[:200]}). "
                + weights_help(f"clip {model}")) from e
        return m.eval(), open_clip.get_tokenizer(model), f"{model}/{weights}"
    path = resolve_weights(weights, what=f"clip {model}")
    m = open_clip.create_model(model, pretrained=None, device="cpu")
    # OpenAI CLIP names are open_clip's own names; open_clip state dicts, safetensors or TorchScript .pt
    state = read_state_dict(path, what=f"clip {model}", torchscript=True)
    state = {k: v for k, v in state.items() if k not in OPENAI_SETTINGS}
    missing, unexpected = m.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("attn_mask")]
    if missing or unexpected:
        raise CurateError(f"Checkpoint {path} does not match open_clip {model}: missing keys {missing[:8]}"
                          f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}. "
                          "Pass the matching model= (or model_config=).")
    m.to(device)
    return m.eval(), open_clip.get_tokenizer(model), str(path)


class ClipEncoder(Encoder):
    name = "clip"
    score_range = ("cosine of unit vectors; with OpenAI ViT-B/32 weights matching captions score about "
                   "0.25-0.35 and unrelated ones 0.10-0.20 (InternVid's FLT kept the top 30%)")

    def __init__(self, device: str | None = "auto", model: str = "ViT-B-32", weights: str = "openai",
                 frames: int | str = 8, model_config: str | None = None, precision: str = "auto",
                 **options: Any) -> None:
        super().__init__(device=device)
        if options:
            raise CurateError(f"Unknown clip option(s): {', '.join(options)} (known: model, weights, frames, "
                              "model_config, precision)")
        import torch

        self.model, self.tokenizer, self.weights_desc = load_open_clip(model, str(weights), self.device, model_config)
        self.model_name = OPENAI_NAMES.get(model, model) if not model_config else Path(model_config).stem
        self.num_frames = int(frames)
        visual = self.model.visual
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = torch.tensor(getattr(visual, "image_mean", None) or CLIP_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(visual, "image_std", None) or CLIP_STD).view(1, 3, 1, 1)
        with torch.inference_mode():
            self.embed_dim = int(self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1])
        self.autocast = autocast_dtype(precision, self.device, "clip")

    @property
    def info(self) -> EncoderInfo:
        return EncoderInfo(name="clip", model=self.model_name, weights=self.weights_desc, embed_dim=self.embed_dim,
                           num_frames=self.num_frames, frame_size=self.image_size,
                           video_emb_shape=(self.embed_dim,),
                           extra={"pooling": "mean of L2-normalised frame embeddings, re-normalised",
                                  "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()})

    def preprocess(self, frames: np.ndarray):
        return preprocess_clip_frames(frames, self.image_size, self.mean, self.std)

    def encode_frames(self, x):
        import torch

        with torch.inference_mode(), autocast(self.autocast):
            f = self.model.encode_image(x.to(self.device, non_blocking=True))
        return l2_normalize(f.float())

    def embed_video_batch(self, inputs: Sequence[Any]) -> np.ndarray:
        import torch

        counts = [int(t.shape[0]) for t in inputs]
        feats = self.encode_frames(torch.cat(list(inputs)))
        out, i = [], 0
        for n in counts:
            out.append(l2_normalize(feats[i:i + n].mean(0)))
            i += n
        return torch.stack(out).cpu().numpy().astype(np.float32)

    def embed_frames(self, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Per-frame embeddings [N, D] (not normalised, as video_features stores them)."""
        import torch

        x = self.preprocess(frames)
        out = []
        for i in range(0, len(x), batch_size):
            with torch.inference_mode(), autocast(self.autocast):
                out.append(self.model.encode_image(x[i:i + batch_size].to(self.device)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

    def embed_text_batch(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), autocast(self.autocast):
            t = self.model.encode_text(tokens)
        return l2_normalize(t.float()).cpu().numpy().astype(np.float32)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())


def preprocess_clip_frames(frames: np.ndarray, size: int, mean, std):
    """uint8 RGB [T,H,W,3] -> float [T,3,size,size]: shorter side to size (bicubic, antialias), center crop."""
    import torch
    import torchvision.transforms.v2.functional as TF

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    x = TF.resize(x, [size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, [size, size])
    x = x.float().div_(255.0)
    return (x - mean) / std

