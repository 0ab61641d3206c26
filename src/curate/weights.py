"""Find model weights (a local path, an http(s) URL, or a Hugging Face hub id, with an offline mode) and read them.

Every encoder and scorer resolves its checkpoint through :func:`resolve_weights`, so the rules are the
same everywhere:

- an existing local file or directory is used as is (air-gapped clusters);
- ``https://...`` is downloaded once into the cache (``$CURATE_CACHE`` or ``~/.cache/curate``);
- ``org/repo`` or ``org/repo/file.pth`` (optionally ``hf-hub:`` prefixed) comes from the Hugging Face hub
  (its own cache; ``HF_HUB_OFFLINE=1`` is honoured);
- with ``CURATE_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) nothing is downloaded: only local paths and
  caches work, and anything else fails with a message that says what to do.

and reads it through :func:`read_state_dict`: ``.pth``/``.pt``/``.bin`` with ``torch.load(weights_only=True)``
(pickled code never runs), ``.safetensors``, or a directory (a Hugging Face model folder, sharded or not).
Wrappers (``{'model': ...}``, ``{'state_dict': ...}``, ``{'module': ...}``) and a DDP ``module.`` prefix
are taken off, so callers see plain parameter names; :func:`strip_prefix` and :func:`add_prefix` rename
the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from curate.errors import CurateError, WeightsUnavailable

__all__ = ["add_prefix", "cache_dir", "checkpoint_files", "hub_file", "hub_folder", "is_hub_repo", "is_offline",
           "read_state_dict", "resolve_weights", "strip_prefix", "weights_help"]


def is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes"} for v in ("CURATE_OFFLINE", "HF_HUB_OFFLINE"))


def cache_dir() -> Path:
    return Path(os.environ.get("CURATE_CACHE", Path.home() / ".cache" / "curate")).expanduser()


def weights_help(what: str) -> str:
    return (
        f"Could not get the weights for {what}. If this machine has no internet access, download the "
        "checkpoint elsewhere and pass its local path (weights=/path/to/file), or use a warm Hugging Face "
        "cache (HF_HOME). For a test run with randomly initialised weights pass weights=random "
        "(make demo OFFLINE=1 does that); the dataset card then records 'weights: random'."
    )


def resolve_weights(spec: str, *, filename: str | None = None, what: str = "this encoder") -> Path:
    """Return a local path for ``spec`` (file or directory), downloading it when allowed.

    ``filename`` names the file to take from a hub repo when ``spec`` is a bare ``org/repo``; with
    ``filename=None`` a bare repo id resolves to a local snapshot directory of the whole repo.
    """
    spec = str(spec).strip()
    local = Path(spec).expanduser()
    if spec.startswith("file://"):
        local = Path(spec[len("file://") :])
    if local.exists():
        return local.resolve()
    if spec.startswith(("/", "./", "../", "~", "file://")):
        raise WeightsUnavailable(f"Weights file {spec!r} does not exist. " + weights_help(what))
    if spec.startswith(("http://", "https://")):
        return _download_url(spec, what)
    spec = spec.removeprefix("hf-hub:")
    parts = spec.split("/")
    if len(parts) >= 2 and all(parts):
        repo_id = "/".join(parts[:2])
        file_in_repo = "/".join(parts[2:]) or filename
        return _download_hub(repo_id, file_in_repo, what)
    raise WeightsUnavailable(
        f"Don't know how to find weights {spec!r}: give a local path, an https URL or a Hugging Face id "
        "(org/repo or org/repo/file)."
    )


def is_hub_repo(spec: str) -> bool:
    """True for a bare Hugging Face repo id ``org/repo`` (optionally ``hf-hub:``) that is not a local path."""
    s = spec.removeprefix("hf-hub:")
    parts = s.split("/")
    return (len(parts) == 2 and all(parts) and not Path(spec).expanduser().exists()
            and not spec.startswith(("/", ".", "~", "file://", "http://", "https://")))


def hub_file(repo: str, filename: str, what: str = "this encoder") -> Path:
    """One file of a hub repo, through :func:`resolve_weights` (cached, offline-aware)."""
    return resolve_weights(f"{repo.removeprefix('hf-hub:')}/{filename}", what=what)


def hub_folder(repo: str, *, required: Sequence[str] = (), any_of: Sequence[str] = (), optional: Sequence[str] = (),
               what: str = "this encoder") -> Path:
    """Fetch the files a model needs from a hub repo (not the whole repo) and return their snapshot folder:
    every ``required`` file, the first of ``any_of`` that exists, and those of ``optional`` that exist."""
    folder = None
    for f in required:
        folder = hub_file(repo, f, what).parent
    if any_of:
        errors = []
        for f in any_of:
            try:
                folder = hub_file(repo, f, what).parent
                break
            except WeightsUnavailable as e:
                errors.append(e)
        else:
            raise errors[0]
    for f in optional:
        try:
            folder = hub_file(repo, f, what).parent
        except WeightsUnavailable:
            pass
    if folder is None:
        raise WeightsUnavailable(f"None of {', '.join(optional)} could be fetched from {repo}. " + weights_help(what))
    return folder


def _download_url(url: str, what: str) -> Path:
    target = cache_dir() / "url" / hashlib.sha256(url.encode()).hexdigest()[:16] / Path(url.split("?")[0]).name
    if target.exists():
        return target
    if is_offline():
        raise WeightsUnavailable(f"Offline mode is on and {url} is not in the cache ({target}). " + weights_help(what))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WeightsUnavailable(f"Downloading {url} failed: {e}. " + weights_help(what)) from e
    os.replace(tmp, target)
    return target


def _download_hub(repo_id: str, filename: str | None, what: str) -> Path:
    try:
        import huggingface_hub as hub
    except ImportError as e:  # pragma: no cover - a core dependency
        raise WeightsUnavailable("huggingface_hub is not installed: pip install huggingface_hub") from e
    kwargs = {"local_files_only": True} if is_offline() else {}
    try:
        if filename:
            return Path(hub.hf_hub_download(repo_id, filename, **kwargs))
        return Path(hub.snapshot_download(repo_id, **kwargs))
    except Exception as e:  # hub raises many kinds: offline, gated, missing repo, network
        where = f"{repo_id}/{filename}" if filename else repo_id
        raise WeightsUnavailable(f"Hugging Face download of {where} failed ({type(e).__name__}: {e}). " + weights_help(what)) from e


# -- reading -------------------------------------------------------------------------------------
#: a Hugging Face model folder's weights: one file, else a sharded index (its ``weight_map`` names the shards)
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: keys a training script wraps the state dict in ({'model': sd, 'optimizer': ...}), taken off in this order
WRAPPER_KEYS = ("model", "state_dict", "module")


def checkpoint_files(folder: Path, what: str = "this model") -> list[Path]:
    """The weight files of a directory: ``model.safetensors`` / ``pytorch_model.bin``, else the shards a
    ``*.index.json`` lists, else the first ``*.safetensors``, ``*.pth``, ``*.pt`` or ``*.bin`` by name."""
    folder = Path(folder)
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for index in HF_INDEX_FILES:
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise WeightsUnavailable(f"Cannot read the shard index {folder / index} ({type(e).__name__}: {e}); "
                                         "fetch the model folder again.") from e
            return [folder / shard for shard in sorted(set(weight_map.values()))]
    for suffix in CHECKPOINT_SUFFIXES:
        found = sorted(p for p in folder.glob(f"*{suffix}") if p.is_file())
        if found:
            return found[:1]
    raise WeightsUnavailable(f"{folder} holds no model.safetensors, pytorch_model.bin, shard index or "
                             f"{'/'.join(CHECKPOINT_SUFFIXES)} checkpoint. " + weights_help(what))


def _torch_load(path: Path) -> Any:
    import torch

    try:  # memory-mapped: a multi-GB file is not read into memory twice
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:  # mmap needs the zip format; old-style files load without it
        if "mmap" not in str(e) and "zip" not in str(e):
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _read_file(path: Path, what: str, torchscript: bool) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own SafetensorError
            raise CurateError(f"Cannot read {what} from {path} ({type(e).__name__}: {str(e)[:300]}): not a "
                              "complete .safetensors file; fetch it again.") from e
    try:
        return _torch_load(path)
    except Exception as e:
        if torchscript:
            import torch

            try:  # OpenAI's released CLIP .pt files are TorchScript archives
                return torch.jit.load(str(path), map_location="cpu").state_dict()
            except Exception:
                pass
        raise CurateError(
            f"Cannot read {what} from {path} with torch.load(weights_only=True) ({type(e).__name__}: "
            f"{str(e)[:300]}). It is not a PyTorch state-dict file, or it holds pickled objects, which are "
            "refused because loading them could run code: pass a .pth/.pt/.bin of tensors or a .safetensors file."
        ) from e


def read_state_dict(path: str | Path, *, what: str = "the checkpoint", torchscript: bool = False) -> dict:
    """The parameter tensors of a checkpoint file or model directory, by name.

    ``.safetensors`` is read with safetensors, anything else with ``torch.load(weights_only=True)``
    (memory-mapped where the file allows); ``torchscript=True`` also accepts a TorchScript archive. A
    directory is read through :func:`checkpoint_files` (shards merged). Up to three wrappers
    (:data:`WRAPPER_KEYS`) and a ``module.`` prefix on every key (DDP) are taken off. Anything that is not
    a non-empty mapping of names to tensors is refused with a :class:`CurateError` naming ``what``.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        state: dict = {}
        for f in checkpoint_files(path, what):
            state.update(read_state_dict(f, what=what, torchscript=torchscript))
        return state
    obj = _read_file(path, what, torchscript)
    for _ in range(3):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)),
                     None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CurateError(f"{path} does not hold a state dict (a mapping of parameter names to tensors, "
                          f"optionally under {'/'.join(WRAPPER_KEYS)}): pass the checkpoint of {what}.")
    odd = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise CurateError(f"{path} is not a plain state dict: {len(odd)} entries are not tensors "
                          f"({', '.join(map(str, odd[:6]))}); pass the checkpoint of {what}.")
    if all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        return strip_prefix(obj, "module.")
    return dict(obj)


def strip_prefix(state: Mapping[str, Any], prefix: str, *, only: bool = False) -> dict:
    """``state`` with ``prefix`` taken off the keys that have it; ``only=True`` also drops the keys that do not."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()
            if not only or k.startswith(prefix)}


def add_prefix(state: Mapping[str, Any], prefix: str) -> dict:
    """``state`` with ``prefix`` put in front of every key that does not start with it already."""
    return {k if k.startswith(prefix) else prefix + k: v for k, v in state.items()}
