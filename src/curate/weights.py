"""Find model weights: a local path, an http(s) URL, or a Hugging Face hub id, with an offline mode.

Every encoder resolves its checkpoint through :func:`resolve_weights`, so the rules are the same
everywhere:

- an existing local file or directory is used as is (air-gapped clusters);
- ``https://...`` is downloaded once into the cache (``$CURATE_CACHE`` or ``~/.cache/curate``);
- ``org/repo`` or ``org/repo/file.pth`` (optionally ``hf-hub:`` prefixed) comes from the Hugging Face hub
  (its own cache; ``HF_HUB_OFFLINE=1`` is honoured);
- with ``CURATE_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) nothing is downloaded: only local paths and
  caches work, and anything else fails with a message that says what to do.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from curate.errors import WeightsUnavailable

__all__ = ["cache_dir", "is_offline", "resolve_weights", "weights_help"]


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
