"""CLIP4Clip weights onto Hugging Face CLIP towers: HF model folders and CLIP4Clip repository checkpoints.

Files are read with :func:`curate.weights.read_state_dict`. OpenAI CLIP names are mapped onto the HF
modules (the mapping of transformers' ``convert_clip_original_pytorch_to_hf``), the architecture of a
repository checkpoint is inferred from its tensor shapes, and loading is strict.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curate.encoders.clip import OPENAI_SETTINGS
from curate.errors import CurateError
from curate.weights import read_state_dict, strip_prefix

__all__ = ["HEAD_PREFIXES", "infer_clip_config", "load_hf_folder", "load_repo_checkpoint", "load_towers",
           "openai_to_hf_state_dict", "read_clip_config", "short_keys"]

log = logging.getLogger(__name__)

#: checkpoint key prefixes of CLIP4Clip's similarity heads -> the head that creates them
HEAD_PREFIXES = {"frame_position_embeddings.": "seqLSTM/seqTransf", "transformerClip.": "seqTransf",
                 "lstm_visual.": "seqLSTM", "cross.": "tightTransf", "similarity_dense.": "tightTransf"}

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


def load_towers(config, state: dict, where: str):
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
            problems.append(f"missing {tower} keys {short_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected {tower} keys {short_keys(unexpected)}")
    if stray:
        problems.append(f"unknown keys {short_keys(stray)}")
    if problems:
        raise CurateError(f"{where} does not match a CLIP model ({'; '.join(problems)}). Refusing to run "
                          "with randomly initialised parts: check the checkpoint and its config.")
    return vision.eval(), text.eval()


def short_keys(keys: Sequence[str], n: int = 8) -> str:
    keys = sorted(keys)
    return "[" + ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "") + "]"



def read_clip_config(spec: str | Path | None):
    """A ``CLIPConfig`` from a ``config.json`` file or a folder holding one; the default ViT-B/32 one for None."""
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


def load_hf_folder(folder: Path):
    """A Hugging Face ``CLIPModel`` folder (``config.json``, weights, optional ``preprocessor_config.json``).

    Returns ``(config, vision, text, preprocessor_config or None, extra)``.
    """
    cfg = read_clip_config(folder)
    state = read_state_dict(folder, what="clip4clip")
    vision, text = load_towers(cfg, state, f"Checkpoint {folder}")
    pre_cfg = None
    if (folder / "preprocessor_config.json").is_file():
        pre_cfg = json.loads((folder / "preprocessor_config.json").read_text())
    extra: dict[str, Any] = {}
    if "logit_scale" in state:
        extra["logit_scale"] = float(state["logit_scale"].float().exp().item())
    return cfg, vision, text, pre_cfg, extra


def load_repo_checkpoint(path: Path):
    """A CLIP4Clip repository checkpoint (``pytorch_model.bin.<epoch>``): OpenAI names mapped onto the HF towers.

    Returns ``(config, vision, text, extra)``; ``extra`` says which head the checkpoint was trained with and
    which head tensors meanP ignores.
    """
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
        names = short_keys(["clip." + k for k in unknown])
        raise CurateError(f"{path}: CLIP tensors with no Hugging Face counterpart {names}. "
                          "Refusing to run with an incomplete mapping.")
    vision, text = load_towers(cfg, mapped, f"CLIP4Clip checkpoint {path}")
    extra: dict[str, Any] = {}
    prefixes = sorted({p for p in HEAD_PREFIXES for k in heads if k.startswith(p)})
    other = sorted(k for k in heads if not k.startswith(tuple(HEAD_PREFIXES)))
    trained = sorted({HEAD_PREFIXES[p] for p in prefixes if p != "frame_position_embeddings."}) or (
        ["seqLSTM/seqTransf"] if prefixes else ["meanP"])
    extra.update(trained_head=", ".join(trained), ignored_head_keys=len(heads),
                 ignored_head_prefixes=[p.rstrip(".") for p in prefixes] + other[:8])
    if "logit_scale" in mapped:
        extra["logit_scale"] = float(mapped["logit_scale"].float().exp().item())
    if heads:
        msg = (f"clip4clip: meanP pooling ignores {len(heads)} similarity-head tensors of {path.name} "
               f"({', '.join(p.rstrip('.') for p in prefixes) or ', '.join(other[:4])})")
        if trained != ["meanP"]:
            log.warning("%s; the checkpoint was trained with %s, so meanP embeddings are not the ones it was "
                        "evaluated with", msg, " / ".join(trained))
        else:
            log.info(msg)
    return cfg, vision, text, extra
