"""Settings of the curate DAGs and the paths a run may touch: roots, allowed directories, local-path checks.

Settings come from the environment first, then from an Airflow Variable of the same name in lower case
(``CURATE_GPU_POOL`` -> Variable ``curate_gpu_pool``), then a default. Nothing heavy is imported here: the DAG
processor imports this module on every parse.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from curate.store.storage import is_remote

# ----------------------------------------------------------------------------- settings
#: the root's inbox folder (lists dropped there run through curate_pipeline once)
INBOX = "inbox"


def setting(name: str, default: str | None = None) -> str | None:
    """Environment variable ``name``, else Airflow Variable ``name.lower()``, else ``default``."""
    value = os.environ.get(name)
    if value:
        return value
    try:
        from airflow.sdk import Variable

        value = Variable.get(name.lower(), default=None)
    except Exception:  # noqa: BLE001  (no Variable backend reachable here: plain imports, tests)
        value = None
    return str(value) if value not in (None, "") else default


def split_list(value: str | None) -> list[str]:
    """``"a:b"`` / ``"a,b"`` (os.pathsep or comma separated) -> ``["a", "b"]``."""
    out: list[str] = []
    for chunk in str(value or "").split(os.pathsep):
        out.extend(p.strip() for p in chunk.split(",") if p.strip())
    return out


def _resolve(path: str | os.PathLike) -> Path:
    return Path(str(path).removeprefix("file://")).expanduser().resolve()


def normalize_root(root: str | os.PathLike) -> str:
    """A root as curate names it: a resolved local path, or a URL (``s3://bucket/prefix``) without a
    trailing slash."""
    s = str(root)
    return s.rstrip("/") if is_remote(s) else str(_resolve(s))


def configured_roots() -> list[str]:
    """Dataset roots from ``CURATE_ROOTS``: the roots DAG runs may write and the UI plugin shows (local
    paths or URLs; separate them with commas when a URL holds the path separator ``:``)."""
    return [normalize_root(p) for p in split_roots(setting("CURATE_ROOTS"))]


def split_roots(value: str | None) -> list[str]:
    """Like :func:`split_list`, but ``s3://...`` keeps its ``:`` (only commas separate URLs)."""
    out: list[str] = []
    for chunk in str(value or "").split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        out.extend([chunk] if is_remote(chunk) else split_list(chunk))
    return out


def default_root() -> str:
    roots = configured_roots()
    return setting("CURATE_ROOT") or (roots[0] if roots else str(Path("~/curate-data").expanduser()))


def gpu_task_kwargs() -> dict[str, Any]:
    """``queue``/``pool``/``pool_slots`` of the GPU tasks (read when the DAG file is parsed)."""
    return {"queue": setting("CURATE_GPU_QUEUE", "gpu"), "pool": setting("CURATE_GPU_POOL", "gpu"),
            "pool_slots": int(setting("CURATE_GPU_POOL_SLOTS", "1") or 1)}


def _within(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def check_root(root: str) -> str:
    """The resolved root; when ``CURATE_ROOTS`` is set it must be one of those roots."""
    if not root:
        raise AirflowFailException("root: give a local directory or a URL such as s3://bucket/prefix")
    real = normalize_root(root)
    roots = configured_roots()
    if roots and real not in roots:
        raise AirflowFailException(f"root {root!r} is not one of the configured roots (CURATE_ROOTS={roots})")
    return real


def allowed_dirs(root: str) -> list[str]:
    """Directories a run may read local files from: ``CURATE_ALLOWED_DIRS``, plus ``ROOT/inbox`` on a local
    root (a bucket's inbox holds source lists only: :func:`check_source_list`)."""
    dirs = [str(_resolve(d)) for d in split_list(setting("CURATE_ALLOWED_DIRS"))]
    return dirs if is_remote(root) else [*dirs, str(_resolve(root) / "inbox")]


def check_local(path: str, dirs: Sequence[str], what: str) -> str:
    real = _resolve(path)
    if not any(_within(real, Path(d)) for d in dirs):
        raise AirflowFailException(f"{what} {path!r} is outside the directories DAG runs may read "
                                   f"({', '.join(dirs)}; set CURATE_ALLOWED_DIRS)")
    return str(real)


def check_source_list(root: str, path: str) -> str:
    """The source list a run may read: a local file under :func:`allowed_dirs`, or, on a root in object
    storage, an object under ``ROOT/inbox/`` (where the inbox DAG puts the lists it claims)."""
    if not is_remote(path):
        return check_local(path, allowed_dirs(root), "source list")
    from curate.errors import CurateError
    from curate.store.storage import Location

    inbox = f"{normalize_root(root)}/{INBOX}/"
    if is_remote(root) and str(path).startswith(inbox):
        try:
            return inbox + Location.clean(str(path)[len(inbox):])
        except CurateError as e:
            raise AirflowFailException(f"source list {path!r}: {e}") from None
    raise AirflowFailException(f"source list {path!r}: a URL must be under the root's inbox ({inbox}); copy the "
                               "list there, or to a local directory of CURATE_ALLOWED_DIRS")


@contextlib.contextmanager
def source_list_file(root: str, checked: str) -> Iterator[Path]:
    """A local file with the content of a list :func:`check_source_list` accepted (downloaded to the scratch
    directory, then removed, when it is in the bucket)."""
    if not is_remote(checked):
        yield Path(checked)
        return
    from curate.store import Root

    with Root(root).local_copy(checked[len(normalize_root(root)) + 1:]) as p:
        yield p


def local_access(root: str) -> dict[str, Any]:
    """``allow_local``/``local_dirs`` of the ingest stage: local media only from :func:`allowed_dirs`, and
    none at all when there are none (a root in a bucket without ``CURATE_ALLOWED_DIRS``)."""
    dirs = allowed_dirs(root)
    return {"allow_local": bool(dirs), "local_dirs": dirs}


def check_encoder_options(options: dict[str, Any], dirs: Sequence[str]) -> dict[str, str]:
    """Option values that name local files (weights=/..., model_config=...) must be inside ``dirs``."""
    out = {}
    for k, v in (options or {}).items():
        s = str(v)
        if s.startswith(("/", "~", "./", "../", "file://")):
            check_local(s, dirs, f"encoder option {k}=")
        out[str(k)] = s
    return out


