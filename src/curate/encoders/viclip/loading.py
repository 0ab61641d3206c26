"""Loading ViCLIP weights: the paper's ``.pth``, the ``OpenGVLab/ViCLIP-*-hf`` safetensors repos, strictly.

Files are read with :func:`curate.weights.read_state_dict`; a common key prefix (``model.``, ...) is taken
off; anything that still does not match the model is refused with the key names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.weights import hub_folder, is_hub_repo, read_state_dict, resolve_weights, strip_prefix

__all__ = ["DEFAULT_WEIGHTS", "load_viclip_state_dict", "read_checkpoint", "resolve_viclip_weights",
           "strip_common_prefix"]

#: default checkpoint per size (the L/14 .pth of the paper; B/16 only exists as the -hf safetensors repo)
DEFAULT_WEIGHTS = {"l": "OpenGVLab/ViCLIP/ViClip-InternVid-10M-FLT.pth", "b": "OpenGVLab/ViCLIP-B-16-hf"}


_ANCHOR = "vision_encoder.conv1.weight"


def read_checkpoint(path: Path) -> tuple[dict, dict[str, Any]]:
    """Read a state dict (see :func:`curate.weights.read_state_dict`: .pth/.pt/.bin, .safetensors or a
    directory) and the ``config.json`` beside it, if any (the -hf repos name their size there)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    hf_config: dict[str, Any] = {}
    if (folder / "config.json").is_file() and (path.is_dir() or path.suffix == ".safetensors"):
        try:
            hf_config = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError:
            hf_config = {}
    return read_state_dict(path, what="viclip"), hf_config


def strip_common_prefix(state: dict) -> tuple[dict, str]:
    """Remove a common prefix (``model.``, ``viclip.``, ``module.``...) found in front of
    ``vision_encoder.conv1.weight``. Returns the renamed dict and the prefix (``""`` if none)."""
    prefixes = {k[: -len(_ANCHOR)] for k in state if k.endswith(_ANCHOR)}
    if not prefixes:
        sample = ", ".join(list(state)[:6])
        raise CurateError(f"This does not look like a ViCLIP checkpoint: no key ends with {_ANCHOR!r} "
                          f"(first keys: {sample})")
    if len(prefixes) > 1:
        raise CurateError(f"Checkpoint holds several ViCLIP models (prefixes {sorted(prefixes)})")
    prefix = prefixes.pop()
    if not prefix:
        return state, ""
    return strip_prefix(state, prefix), prefix


def load_viclip_state_dict(model, state: dict, source: str = "checkpoint") -> list[str]:
    """Strict load with readable errors. Only ``temp`` (the training temperature) may be missing;
    returns the list of tolerated missing keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    tolerated = [k for k in missing if k == "temp"]
    missing = [k for k in missing if k not in tolerated]
    mismatched = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        def fmt(items):
            return ", ".join(items[:12]) + (f" ... (+{len(items) - 12} more)" if len(items) > 12 else "") or "none"

        raise CurateError(f"{source} does not match the ViCLIP model ({model.config.describe()}): "
                          f"missing keys: {fmt(missing)}; unexpected keys: {fmt(unexpected)}; "
                          f"shape mismatches: {fmt(mismatched)}. Pass the matching size=/config= or a ViCLIP checkpoint.")
    import torch

    state = dict(state)
    for k in tolerated:
        state[k] = torch.tensor(0.01)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                          strict=True, assign=True)
    return tolerated


def resolve_viclip_weights(spec: str) -> Path:
    """A local checkpoint path for ``spec`` (see :func:`curate.weights.resolve_weights`). A bare hub repo
    ``org/repo`` means its ``model.safetensors`` (the -hf layout; its ``config.json`` is fetched too when
    possible), except ``OpenGVLab/ViCLIP``, which means its ``ViClip-InternVid-10M-FLT.pth``."""
    what = f"viclip ({spec})"
    if not is_hub_repo(spec):
        return resolve_weights(spec, what=what)
    repo = spec.removeprefix("hf-hub:")
    if repo.lower() == "opengvlab/viclip":
        return resolve_weights(DEFAULT_WEIGHTS["l"], what=what)
    # config.json only names the size; the shapes say the rest
    return hub_folder(repo, required=("model.safetensors",), optional=("config.json",), what=what) / "model.safetensors"
