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
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.encoders.base import Encoder, EncoderInfo, autocast, autocast_dtype, l2_normalize
from curate.encoders.clip import OPENAI_SETTINGS
from curate.encoders.pixel_stats import CLIP_MEAN, CLIP_STD
from curate.errors import CurateError, WeightsUnavailable
from curate.weights import HF_WEIGHT_FILES, read_state_dict, resolve_weights, strip_prefix, weights_help

__all__ = [
    "DEFAULT_TOKENIZER",
    "DEFAULT_WEIGHTS",
    "Clip4ClipEncoder",
    "FramePreprocessor",
    "infer_clip_config",
    "linspace_cut",
    "one_fps_indices",
    "openai_to_hf_state_dict",
]

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "Searchium-ai/clip4clip-webvid150k"
DEFAULT_TOKENIZER = "openai/clip-vit-base-patch32"
HEADS = ("meanP", "seqLSTM", "seqTransf", "tightTransf")
#: checkpoint key prefixes of CLIP4Clip's similarity heads -> the head that creates them
HEAD_PREFIXES = {"frame_position_embeddings.": "seqLSTM/seqTransf", "transformerClip.": "seqTransf",
                 "lstm_visual.": "seqLSTM", "cross.": "tightTransf", "similarity_dense.": "tightTransf"}
FRAMES_PER_FORWARD = 256  # frames of many clips go through the vision tower together, this many at a time
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


# -- frame sampling ------------------------------------------------------------------------------
def one_fps_indices(num_frames_in_clip: int, fps: float, rate: float = 1.0) -> list[int]:
    """Frame indices of the Searchium notebook's ``video2image`` (``frame_rate=rate``, 1 per second).

    ``fps`` is truncated to an integer (``int(CAP_PROP_FPS)``); the clip lasts ``ceil(n / fps)`` seconds;
    indices are ``floor(arange(0, seconds * fps, fps / rate))``, keeping those inside the clip (the
    notebook stops at the first failed read). A video under 1 fps counts as 1 fps (the notebook returns
    a blank frame there).
    """
    n = int(num_frames_in_clip)
    if n <= 0:
        raise ValueError("clip has no frames")
    if not math.isfinite(float(fps)) or float(fps) <= 0:
        raise ValueError(f"clip has no usable frame rate (fps={fps!r})")
    if not rate > 0:
        raise ValueError(f"sampling rate must be positive, got {rate!r}")
    fps_int = max(1, int(fps))
    seconds = -(-n // fps_int)
    idx = np.floor(np.arange(0, seconds * fps_int, fps_int / float(rate))).astype(np.int64)
    out = [int(i) for i in idx if i < n]
    return out or [0]


def linspace_cut(indices: Sequence[int], k: int) -> list[int]:
    """Keep ``k`` of ``indices`` the way CLIP4Clip does (``slice_framepos=2``); ``k<=0`` keeps all."""
    indices = list(indices)
    if k <= 0 or len(indices) <= k:
        return indices
    sel = np.linspace(0, len(indices) - 1, num=k, dtype=int)
    return [indices[i] for i in sel]


# -- preprocessing -------------------------------------------------------------------------------
def _hw(value: Any, default: tuple[int, int] | None) -> tuple[int, int] | None:
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return int(value), int(value)
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"]), int(value["shortest_edge"])
    raise CurateError(f"Unsupported size in preprocessor_config.json: {value!r}")


@dataclass
class FramePreprocessor:
    """uint8 RGB ``[T,H,W,3]`` -> float32 ``[T,3,crop,crop]``, the steps of transformers' CLIPImageProcessor.

    ``resize_shortest`` resizes the shorter side (keeping the aspect ratio, longer side truncated like
    torchvision); ``resize_hw`` resizes to an exact size; resampling uses torchvision on uint8 with
    antialiasing; rescale and normalise are fused as ``(x - mean/scale) / (std/scale)``.
    """

    resize_shortest: int | None = 224
    resize_hw: tuple[int, int] | None = None
    resample: int = 3  # PIL codes: 0 nearest, 2 bilinear, 3 bicubic
    crop: tuple[int, int] | None = (224, 224)
    rescale: float | None = 1 / 255
    mean: tuple[float, ...] | None = CLIP_MEAN
    std: tuple[float, ...] | None = CLIP_STD

    @classmethod
    def for_size(cls, size: int) -> FramePreprocessor:
        return cls(resize_shortest=size, crop=(size, size))

    @classmethod
    def from_config(cls, cfg: dict, default_size: int = 224) -> FramePreprocessor:
        """Build from a ``preprocessor_config.json`` dict; missing keys take CLIP's defaults."""
        p = cls.for_size(default_size)
        if cfg.get("do_resize", True):
            size = cfg.get("size")
            if isinstance(size, dict) and "shortest_edge" in size:
                p.resize_shortest, p.resize_hw = int(size["shortest_edge"]), None
            elif isinstance(size, (int, float)):  # old configs: an int is the shortest edge
                p.resize_shortest, p.resize_hw = int(size), None
            elif size is not None:
                p.resize_shortest, p.resize_hw = None, _hw(size, None)
        else:
            p.resize_shortest = p.resize_hw = None
        p.resample = int(cfg.get("resample", p.resample))
        if p.resample not in (0, 2, 3):
            raise CurateError(f"preprocessor_config.json resample={p.resample} is not supported (0, 2, 3)")
        p.crop = _hw(cfg.get("crop_size"), p.crop) if cfg.get("do_center_crop", True) else None
        p.rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None
        if cfg.get("do_normalize", True):
            p.mean = tuple(float(v) for v in cfg.get("image_mean", CLIP_MEAN))
            p.std = tuple(float(v) for v in cfg.get("image_std", CLIP_STD))
        else:
            p.mean = p.std = None
        return p

    @property
    def output_size(self) -> int:
        if self.crop:
            return self.crop[0]
        if self.resize_hw:
            return self.resize_hw[0]
        return self.resize_shortest or 0

    def __call__(self, frames: np.ndarray):
        import torch
        import torchvision.transforms.v2.functional as TF

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise ValueError(f"expected uint8 RGB frames [T,H,W,3] with T>0, got shape {frames.shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
        mode = {0: TF.InterpolationMode.NEAREST, 2: TF.InterpolationMode.BILINEAR,
                3: TF.InterpolationMode.BICUBIC}[self.resample]
        h, w = x.shape[-2:]
        if self.resize_shortest:
            s = self.resize_shortest
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(s * long / short)
            new_size = (new_long, s) if w <= h else (s, new_long)
        else:
            new_size = self.resize_hw
        if new_size is not None:
            x = TF.resize(x, list(new_size), interpolation=mode, antialias=True)
        if self.crop:
            x = _center_crop(x, *self.crop)
        x = x.to(torch.float32)
        if self.mean is not None and self.std is not None:
            scale = self.rescale or 1.0
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1) / scale
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1) / scale
            x = (x - mean) / std
        elif self.rescale:
            x = x * self.rescale
        return x

    def describe(self) -> dict[str, Any]:
        return {"resize_shortest": self.resize_shortest, "resize_hw": self.resize_hw,
                "resample": {0: "nearest", 2: "bilinear", 3: "bicubic"}[self.resample], "crop": self.crop,
                "rescale": self.rescale, "mean": self.mean, "std": self.std}


def _center_crop(x, ch: int, cw: int):
    """transformers' torchvision center crop: zero-pad when smaller, top/left = int((size - crop) / 2)."""
    import torchvision.transforms.v2.functional as TF

    h, w = x.shape[-2:]
    if cw > w or ch > h:
        pad = [(cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0,
               (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0]
        x = TF.pad(x, pad, fill=0)
        h, w = x.shape[-2:]
    top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
    return x[..., top:top + ch, left:left + cw]


# -- checkpoints ---------------------------------------------------------------------------------
_LAYER = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TOP = {"visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale"}
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def openai_to_hf_state_dict(clip_state: dict) -> tuple[dict, list[str]]:
    """Map OpenAI CLIP names (``clip.`` already stripped) to HF ``CLIPModel`` names.

    ``attn.in_proj_{weight,bias}`` is split into q/k/v; ``visual.proj`` and ``text_projection`` (stored
    ``[width, embed]`` and applied as ``x @ proj``) become the transposed ``Linear`` weights. Returns
    the mapped dict and the names that have no mapping.
    """
    out: dict = {}
    unknown: list[str] = []
    for k, v in clip_state.items():
        if k in OPENAI_SETTINGS:
            continue
        if k in _TOP:
            out[_TOP[k]] = v
        elif k == "visual.proj":
            out["visual_projection.weight"] = v.t().contiguous()
        elif k == "text_projection":
            out["text_projection.weight"] = v.t().contiguous()
        elif m := _BLOCK.match(k):
            tower = "vision_model" if m.group(1) else "text_model"
            i, rest = m.group(2), m.group(3)
            prefix = f"{tower}.encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                if v.shape[0] % 3:
                    unknown.append(k)
                    continue
                for name, part in zip("qkv", v.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
                continue
            mod, _, param = rest.rpartition(".")
            if mod in _LAYER:
                out[f"{prefix}{_LAYER[mod]}.{param}"] = v
            else:
                unknown.append(k)
        else:
            unknown.append(k)
    return out, unknown


def _count_blocks(state: dict, prefix: str) -> int:
    pat = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    ids = {int(m.group(1)) for k in state if (m := pat.match(k))}
    if ids and ids != set(range(max(ids) + 1)):
        raise CurateError(f"checkpoint has non-contiguous {prefix}N blocks: {sorted(ids)}")
    return len(ids)


def infer_clip_config(clip_state: dict):
    """A ``CLIPConfig`` for an OpenAI-layout CLIP state dict, from tensor shapes.

    Heads follow OpenAI's rule (width // 64, both towers); activations are QuickGELU, LayerNorm eps 1e-5.
    The text config keeps ``eos_token_id=2``, which makes HF pool at ``argmax(input_ids)``: the EOT
    token, exactly as OpenAI CLIP / CLIP4Clip ``encode_text`` do.
    """
    from transformers import CLIPConfig

    need = ["visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
            "positional_embedding", "ln_final.weight", "text_projection",
            "visual.transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_fc.weight"]
    missing = [k for k in need if k not in clip_state]
    if missing:
        raise CurateError(f"Not a CLIP ViT checkpoint: missing {', '.join('clip.' + k for k in missing)}")
    conv = clip_state["visual.conv1.weight"]
    v_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    n_pos = int(clip_state["visual.positional_embedding"].shape[0])
    grid = math.isqrt(n_pos - 1)
    if grid * grid + 1 != n_pos:
        raise CurateError(f"visual.positional_embedding has {n_pos} rows, not 1 + a square grid")
    embed_dim = int(clip_state["visual.proj"].shape[1])
    t_width = int(clip_state["ln_final.weight"].shape[0])
    if int(clip_state["text_projection"].shape[1]) != embed_dim:
        raise CurateError("text_projection and visual.proj disagree on the embedding size")
    if v_width % 64 or t_width % 64:
        raise CurateError(f"cannot infer attention heads: widths {v_width}/{t_width} are not multiples of 64")
    vision = {"hidden_size": v_width, "patch_size": patch, "image_size": patch * grid,
              "num_hidden_layers": _count_blocks(clip_state, "visual.transformer.resblocks."),
              "num_attention_heads": v_width // 64,
              "intermediate_size": int(clip_state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": embed_dim}
    text = {"hidden_size": t_width, "vocab_size": int(clip_state["token_embedding.weight"].shape[0]),
            "max_position_embeddings": int(clip_state["positional_embedding"].shape[0]),
            "num_hidden_layers": _count_blocks(clip_state, "transformer.resblocks."),
            "num_attention_heads": t_width // 64,
            "intermediate_size": int(clip_state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": embed_dim,
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


def _load_towers(config, state: dict, where: str):
    """Build the two HF towers from ``config`` and load ``state`` (CLIPModel names) strictly."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    vision = CLIPVisionModelWithProjection(config.vision_config)
    text = CLIPTextModelWithProjection(config.text_config)
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # legacy buffers
    vis_keys = {k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))}
    txt_keys = {k: v for k, v in state.items() if k.startswith(("text_model.", "text_projection."))}
    stray = sorted(set(state) - set(vis_keys) - set(txt_keys) - {"logit_scale"})
    problems = []
    for tower, keys in (("vision", vis_keys), ("text", txt_keys)):
        model = vision if tower == "vision" else text
        try:
            missing, unexpected = model.load_state_dict(keys, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise CurateError(f"{where}: the {tower} tower does not fit the config: {str(e)[:600]}") from e
        if missing:
            problems.append(f"missing {tower} keys {_short(missing)}")
        if unexpected:
            problems.append(f"unexpected {tower} keys {_short(unexpected)}")
    if stray:
        problems.append(f"unknown keys {_short(stray)}")
    if problems:
        raise CurateError(f"{where} does not match a CLIP model ({'; '.join(problems)}). Refusing to run "
                          "with randomly initialised parts: check the checkpoint and its config.")
    return vision.eval(), text.eval()


def _short(keys: Sequence[str], n: int = 8) -> str:
    keys = sorted(keys)
    return "[" + ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "") + "]"


def _is_hub_repo(spec: str) -> bool:
    s = spec.removeprefix("hf-hub:")
    parts = s.split("/")
    return (len(parts) == 2 and all(parts) and not Path(spec).expanduser().exists()
            and not spec.startswith(("/", ".", "~", "file://", "http://", "https://")))


def _hub_file(repo: str, filename: str, what: str) -> Path:
    repo = repo.removeprefix("hf-hub:")
    return resolve_weights(f"{repo}/{filename}", what=what)


def _hub_snapshot(repo: str, required: Sequence[str], any_of: Sequence[str], optional: Sequence[str],
                  what: str) -> Path:
    """Fetch the files a model needs (not the whole repo) and return their snapshot directory."""
    folder = None
    for f in required:
        folder = _hub_file(repo, f, what).parent
    if any_of:
        errors = []
        for f in any_of:
            try:
                folder = _hub_file(repo, f, what).parent
                break
            except WeightsUnavailable as e:
                errors.append(e)
        else:
            raise errors[0]
    for f in optional:
        with contextlib.suppress(WeightsUnavailable):
            _hub_file(repo, f, what)
    assert folder is not None
    return folder


# -- tokenizer -----------------------------------------------------------------------------------
def bundled_tokenizer():
    """A ``CLIPTokenizer`` built offline from the OpenAI BPE file that open_clip ships.

    Same vocabulary (49408) and merges as ``openai/clip-vit-base-patch32``'s ``vocab.json``/``merges.txt``
    (the OpenAI ``SimpleTokenizer`` construction).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges)


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file()
                                                     and (folder / "merges.txt").is_file())


def _hub_tokenizer_dir(repo: str, what: str) -> Path:
    """Fetch the tokenizer files a hub repo has; its snapshot directory must end up with a usable set."""
    folder, first_error = None, None
    for f in TOKENIZER_FILES:
        try:
            folder = _hub_file(repo, f, what).parent
        except WeightsUnavailable as e:
            first_error = first_error or e
    if folder is None or not _has_tokenizer(folder):
        raise first_error or WeightsUnavailable(f"{repo} has no CLIP tokenizer files. " + weights_help(what))
    return folder


def load_tokenizer(spec: str):
    """``bundled``, a local tokenizer directory, or a Hugging Face id (files fetched offline-aware)."""
    from transformers import CLIPTokenizer

    spec = str(spec)
    if spec == "bundled":
        return bundled_tokenizer()
    what = f"clip4clip tokenizer {spec} (tokenizer=bundled builds the OpenAI CLIP tokenizer offline)"
    if _is_hub_repo(spec):
        folder = _hub_tokenizer_dir(spec, what)
    else:
        folder = resolve_weights(spec, what=what)
        if folder.is_file():
            folder = folder.parent
    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise WeightsUnavailable(f"No CLIP tokenizer in {folder} ({type(e).__name__}: {str(e)[:200]}). "
                                 "Pass tokenizer=<dir or hub id> or tokenizer=bundled.") from e


# -- the encoder ---------------------------------------------------------------------------------
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
            cfg = self._config_from(config)
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
            if _is_hub_repo(weights):
                folder = _hub_snapshot(weights, ("config.json",), HF_WEIGHT_FILES, ("preprocessor_config.json",), what)
            else:
                folder = resolve_weights(weights, what=what)
            if folder.is_dir():
                cfg = self._config_from(folder)
                state = read_state_dict(folder, what="clip4clip")
                self.vision, self.text = _load_towers(cfg, state, f"Checkpoint {folder}")
                if (folder / "preprocessor_config.json").is_file():
                    pre_cfg = json.loads((folder / "preprocessor_config.json").read_text())
                if "logit_scale" in state:
                    self.extra["logit_scale"] = float(state["logit_scale"].float().exp().item())
                if _is_hub_repo(weights):
                    tok_default = weights
                else:
                    tok_default = str(folder) if _has_tokenizer(folder) else DEFAULT_TOKENIZER
                self.layout = "hf"
            else:
                cfg = self._load_repo_checkpoint(folder)
                tok_default = DEFAULT_TOKENIZER
                self.layout = "clip4clip-repo"
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

    @staticmethod
    def _config_from(spec: str | Path | None):
        from transformers import CLIPConfig

        if spec is None:
            return CLIPConfig()
        p = Path(spec).expanduser()
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise CurateError(f"clip4clip: no CLIP config at {spec} (expected a config.json)")
        data = json.loads(p.read_text())
        if data.get("model_type") not in (None, "clip") or "vision_config" not in data or "text_config" not in data:
            raise CurateError(f"{p} is not a CLIPModel config (model_type 'clip' with text_config and vision_config)")
        drop = ("architectures", "transformers_version")
        cfg = CLIPConfig.from_dict({k: v for k, v in data.items() if k not in drop})
        # CLIPModel projects with the top-level projection_dim; the *WithProjection towers read their own
        cfg.vision_config.projection_dim = cfg.text_config.projection_dim = cfg.projection_dim
        return cfg

    def _load_repo_checkpoint(self, path: Path):
        state = read_state_dict(path, what="a CLIP4Clip checkpoint (pytorch_model.bin.<epoch>)")
        clip = strip_prefix(state, "clip.", only=True)
        heads = {k: v for k, v in state.items() if not k.startswith("clip.")}
        if not clip:
            raise CurateError(f"{path} has no 'clip.'-prefixed tensors: not a CLIP4Clip checkpoint "
                              "(for a Hugging Face CLIPModel give its directory with config.json)")
        if "visual.conv2.weight" in clip:
            raise CurateError(f"{path} was trained with --linear_patch 3d (clip.visual.conv2.weight); only the 2d "
                              "patch embedding maps onto Hugging Face CLIP")
        cfg = infer_clip_config(clip)
        mapped, unknown = openai_to_hf_state_dict(clip)
        if unknown:
            names = _short(["clip." + k for k in unknown])
            raise CurateError(f"{path}: CLIP tensors with no Hugging Face counterpart {names}. "
                              "Refusing to run with an incomplete mapping.")
        self.vision, self.text = _load_towers(cfg, mapped, f"CLIP4Clip checkpoint {path}")
        prefixes = sorted({p for p in HEAD_PREFIXES for k in heads if k.startswith(p)})
        other = sorted(k for k in heads if not k.startswith(tuple(HEAD_PREFIXES)))
        trained = sorted({HEAD_PREFIXES[p] for p in prefixes if p != "frame_position_embeddings."}) or (
            ["seqLSTM/seqTransf"] if prefixes else ["meanP"])
        self.extra.update(trained_head=", ".join(trained), ignored_head_keys=len(heads),
                          ignored_head_prefixes=[p.rstrip(".") for p in prefixes] + other[:8])
        if "logit_scale" in mapped:
            self.extra["logit_scale"] = float(mapped["logit_scale"].float().exp().item())
        if heads:
            msg = (f"clip4clip: meanP pooling ignores {len(heads)} similarity-head tensors of {path.name} "
                   f"({', '.join(p.rstrip('.') for p in prefixes) or ', '.join(other[:4])})")
            if trained != ["meanP"]:
                log.warning("%s; the checkpoint was trained with %s, so meanP embeddings are not the ones it was "
                            "evaluated with", msg, " / ".join(trained))
            else:
                log.info(msg)
        return cfg

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
