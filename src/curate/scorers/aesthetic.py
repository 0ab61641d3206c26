"""The LAION improved aesthetic predictor over CLIP ViT-L/14 frame embeddings (column ``aesthetic``).

The predictor (christophschuhmann/improved-aesthetic-predictor, ``sac+logos+ava1-l14-linearMSE.pth``)
is an MLP 768→1024→128→64→16→1 without activations, fed the L2-normalised CLIP ViT-L/14 image
embedding of a frame; it regresses an AVA-style 1–10 rating (most clips score 4–6).

Recipes: ``internvid`` scores 4 uniformly spaced frames and keeps the maximum (InternVid-Aes);
``opensora`` scores frames at 10%, 50% and 90% of the clip and takes the mean (Open-Sora v1.x).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from curate.encoders.base import uniform_indices
from curate.encoders.clip import ClipEncoder
from curate.errors import CurateError
from curate.media.frames import batches, clip_groups, decode_clips
from curate.scorers import Scorer
from curate.store import Root
from curate.weights import read_state_dict, resolve_weights

DEFAULT_WEIGHTS = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                   "sac+logos+ava1-l14-linearMSE.pth")
RECIPES = {"internvid": (4, "max"), "opensora": (3, "mean")}


def build_mlp(in_dim: int):
    from torch import nn

    return nn.Sequential(nn.Linear(in_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


def load_predictor(weights: str):
    """The MLP from a checkpoint with the original keys ``layers.{0,2,4,6,7}.{weight,bias}``."""
    path = resolve_weights(weights, what="the aesthetic predictor")
    state = read_state_dict(path, what="the aesthetic predictor")
    if "layers.0.weight" not in state:
        raise CurateError(f"{path} is not an improved-aesthetic-predictor checkpoint (no layers.0.weight; "
                          f"keys: {list(state)[:6]})")
    mlp = build_mlp(int(state["layers.0.weight"].shape[1]))
    missing, unexpected = mlp.load_state_dict({k[len("layers."):]: v for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise CurateError(f"aesthetic predictor {path}: missing keys {missing}, unexpected keys {unexpected}")
    return mlp.eval()


class AestheticScorer(Scorer):
    name = "aesthetic"
    incremental = True
    scope = "clip"  # decodes each clip: per batch, on the GPU workers

    def __init__(self, weights: str = DEFAULT_WEIGHTS, clip_model: str = "ViT-L-14", clip_weights: str = "openai",
                 model_config: str | None = None, recipe: str = "internvid", frames: int | str | None = None,
                 device: str = "auto", batch_size: int | str = 32, workers: int | str = 2) -> None:
        if recipe not in RECIPES:
            raise CurateError(f"aesthetic recipe must be one of {sorted(RECIPES)}")
        self.weights, self.recipe = weights, recipe
        self.clip_opts: dict[str, Any] = {"model": clip_model, "weights": clip_weights}
        if model_config:
            self.clip_opts["model_config"] = model_config
        self.n, self.reduce = RECIPES[recipe]
        if frames is not None:
            self.n = int(frames)
        self.device, self.batch_size, self.workers = device, int(batch_size), int(workers)
        self.clip = None

    def columns(self, root: Root) -> list[str]:
        return ["aesthetic", "aesthetic_error"]

    # sampler protocol (frames.decode_clips)
    def frame_indices(self, num_frames_in_clip: int, fps: float) -> list[int]:
        if self.recipe == "opensora" and self.n == 3:
            return [min(num_frames_in_clip - 1, int(p * num_frames_in_clip)) for p in (0.1, 0.5, 0.9)]
        return uniform_indices(num_frames_in_clip, self.n)

    def decode_size(self, width: int, height: int):
        return None

    def preprocess(self, frames: np.ndarray):
        return self.clip.preprocess(frames)

    def score_frames(self, x) -> np.ndarray:
        """Aesthetic score of each preprocessed frame: MLP(L2-normalised CLIP image embedding)."""
        import torch

        feats = self.clip.encode_frames(x)  # L2-normalised, fp32
        with torch.inference_mode():
            return self.mlp(feats.cpu()).squeeze(-1).numpy()

    def compute(self, root: Root, clip_ids: pa.Array) -> pa.Table:
        if len(clip_ids) == 0:
            return pa.table({"clip_id": clip_ids, "aesthetic": pa.array([], pa.float64()),
                             "aesthetic_error": pa.array([], pa.string())})
        self.mlp = load_predictor(self.weights)
        self.clip = ClipEncoder(device=self.device, **self.clip_opts)
        if self.clip.embed_dim != self.mlp[0].in_features:
            raise CurateError(f"aesthetic predictor expects {self.mlp[0].in_features}-d CLIP embeddings, "
                              f"{self.clip_opts['model']} gives {self.clip.embed_dim}: use clip_model=ViT-L-14")
        scores: dict[str, float] = {}
        errors: dict[str, str] = {}
        decoded = decode_clips(root, self, clip_groups(root, clip_ids), workers=self.workers, frames_per_clip=self.n)
        import torch

        for batch in batches(decoded, self.batch_size):
            good = [(c, x) for c, x, err in batch if err is None]
            errors.update({c["clip_id"]: f"decode: {err}" for c, _, err in batch if err is not None})
            if not good:
                continue
            per_frame = self.score_frames(torch.cat([x for _, x in good]))
            i = 0
            for c, x in good:
                s = per_frame[i:i + len(x)]
                i += len(x)
                scores[c["clip_id"]] = float(s.max() if self.reduce == "max" else s.mean())
        ids = clip_ids.to_pylist()
        return pa.table({"clip_id": clip_ids, "aesthetic": pa.array([scores.get(i) for i in ids], pa.float64()),
                         "aesthetic_error": pa.array([errors.get(i) for i in ids], pa.string())})
