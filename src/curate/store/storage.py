"""Where a dataset root lives: a local directory or any fsspec URL (``s3://``, ``gs://``, ``az://``, ...).

:class:`Location` is the one file API the stages use for everything that is not a table: media, info
JSON, shards, cards, reports, indexes. Paths inside it are POSIX paths relative to the root. Local
roots use the plain filesystem (writes are atomic: temporary name + rename); remote roots go through
fsspec (one PUT per object is atomic there). Decoders and cutters need local files: :meth:`local_copy`
downloads into the scratch directory (``CURATE_SCRATCH``, capped by ``CURATE_SCRATCH_MAX_GB``) when the
root is remote and removes the copy afterwards; :meth:`local_output` gives a local file to write whose
content is then moved (local) or uploaded (remote) into place.

Credentials and endpoints come from the usual configuration of fsspec and Lance (``AWS_*`` environment
variables, ``AWS_ENDPOINT_URL``, ``~/.aws``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...); extra options as JSON
in ``CURATE_FSSPEC_OPTIONS`` (fsspec) and ``CURATE_STORAGE_OPTIONS`` (Lance ``storage_options``). None
of them is ever logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from curate.errors import CurateError

__all__ = ["Location", "is_remote", "scratch_dir", "scratch_file"]


def is_remote(location: str | os.PathLike) -> bool:
    s = str(location)
    return "://" in s and not s.startswith("file://")


def _env_json(name: str) -> dict:
    raw = os.environ.get(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise CurateError(f"{name} must be a JSON object of options (it is not valid JSON).") from None
    if not isinstance(value, dict):
        raise CurateError(f"{name} must be a JSON object of options.")
    return value


def lance_storage_options(url: str) -> dict[str, str]:
    """Lance ``storage_options`` for ``url``: the environment is read by Lance itself; this adds what it
    does not infer (plain-HTTP endpoints such as a local S3 API server) and ``CURATE_STORAGE_OPTIONS``."""
    opts: dict[str, str] = {}
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["aws_endpoint"] = endpoint
            if endpoint.startswith("http://"):
                opts["allow_http"] = "true"
    opts.update({str(k): str(v) for k, v in _env_json("CURATE_STORAGE_OPTIONS").items()})
    return opts


# -- scratch --------------------------------------------------------------------------------------

def scratch_dir() -> Path:
    """The local scratch directory (``CURATE_SCRATCH``, default ``$TMPDIR/curate-scratch``)."""
    d = Path(os.environ.get("CURATE_SCRATCH") or Path(tempfile.gettempdir()) / "curate-scratch")
    d.mkdir(parents=True, exist_ok=True)
    return d


def scratch_limit() -> int:
    """Bytes the scratch directory may hold (``CURATE_SCRATCH_MAX_GB``, default 50)."""
    try:
        return int(float(os.environ.get("CURATE_SCRATCH_MAX_GB", "50")) * (1 << 30))
    except ValueError:
        raise CurateError("CURATE_SCRATCH_MAX_GB must be a number of GiB.") from None


def _scratch_used(d: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(d):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def _reserve(size: int) -> None:
    d = scratch_dir()
    if size and _scratch_used(d) + size > scratch_limit():
        raise CurateError(
            f"The scratch directory {d} would exceed CURATE_SCRATCH_MAX_GB "
            f"({scratch_limit() / (1 << 30):.1f} GiB) with a {size / (1 << 20):.0f} MiB file: raise the limit, "
            "point CURATE_SCRATCH at a larger disk, or run fewer stages at once on this machine.")


@contextlib.contextmanager
def scratch_file(suffix: str = "", size: int = 0) -> Iterator[Path]:
    """A fresh file name in the scratch directory, removed on exit (``size``: bytes it will hold)."""
    _reserve(size)
    d = Path(tempfile.mkdtemp(prefix="c-", dir=scratch_dir()))
    try:
        yield d / f"file{suffix}"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def scratch_tree() -> Iterator[Path]:
    """A fresh directory in the scratch directory, removed on exit."""
    d = Path(tempfile.mkdtemp(prefix="d-", dir=scratch_dir()))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class _MediaCache:
    """Downloads of remote files kept for reuse by one process (media read by several steps), in
    ``<scratch>/cache-<pid>-*``: least recently used ones go when the scratch limit would be passed, all
    of them at exit; a cache left by a killed process is removed by the next one that starts a cache."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._files: dict[str, Path] = {}  # key -> local file, in order of use

    def _directory(self) -> Path:
        if self._dir is None:
            import atexit

            root = scratch_dir()
            for old in root.glob("cache-*"):
                pid = old.name.split("-")[1] if old.name.count("-") >= 2 else ""
                if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                    shutil.rmtree(old, ignore_errors=True)
            self._dir = Path(tempfile.mkdtemp(prefix=f"cache-{os.getpid()}-", dir=root))
            atexit.register(shutil.rmtree, self._dir, True)
        return self._dir

    def get(self, key: str, size: int, fetch) -> Path:
        with self._lock:
            p = self._files.pop(key, None)
            if p is not None and p.exists():
                self._files[key] = p
                return p
            d = self._directory()
            limit = scratch_limit()
            while self._files and _scratch_used(scratch_dir()) + size > limit:
                _, old = next(iter(self._files.items()))
                self._files.pop(next(iter(self._files)))
                old.unlink(missing_ok=True)
            _reserve(size)
            p = d / f"{len(os.listdir(d)):06d}-{uuid.uuid4().hex[:6]}-{PurePosixPath(key).name}"
            fetch(p)
            self._files[key] = p
            return p


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_CACHE = _MediaCache()


# -- location -------------------------------------------------------------------------------------

class Location:
    """A directory, local or remote, with the file operations the stages need (paths relative to it)."""

    def __init__(self, location: str | os.PathLike) -> None:
        s = str(location)
        self.remote = is_remote(s)
        if self.remote:
            import fsspec

            self.base = s.rstrip("/")
            try:
                self.fs, self._root = fsspec.core.url_to_fs(self.base, **_env_json("CURATE_FSSPEC_OPTIONS"))
            except (ImportError, ValueError) as e:
                raise CurateError(f"Cannot open the dataset root {self.base!r}: {e} (install the fsspec "
                                  "package for that scheme, e.g. s3fs, gcsfs or adlfs).") from None
            self._root = self._root.rstrip("/")
        else:
            self.base = str(Path(s.removeprefix("file://")).expanduser().resolve())
            self.fs, self._root = None, self.base

    def __str__(self) -> str:
        return self.base

    # paths
    @staticmethod
    def clean(rel: str | os.PathLike) -> str:
        """``rel`` as a normalised relative POSIX path; anything that would leave the root is refused."""
        s = str(rel).replace("\\", "/")
        parts = [p for p in PurePosixPath(s).parts if p not in ("", ".")]
        if s.startswith("/") or any(p == ".." for p in parts):
            raise CurateError(f"Refusing path outside the dataset root: {s!r}")
        return "/".join(parts)

    def url(self, rel: str | os.PathLike = "") -> str:
        """The URL (remote) or absolute path (local) of ``rel``."""
        rel = self.clean(rel)
        return f"{self.base}/{rel}" if rel else self.base

    def _p(self, rel) -> str:
        rel = self.clean(rel)
        return f"{self._root}/{rel}" if rel else self._root

    def local_path(self, rel: str | os.PathLike = "") -> Path:
        """The local path of ``rel`` (local roots only: remote ones use :meth:`local_copy`)."""
        if self.remote:
            raise CurateError(f"{self.base} is not a local directory: this step needs a local copy "
                              "(a bug: please report which command printed this).")
        return Path(self._p(rel))

    # queries
    def exists(self, rel: str | os.PathLike) -> bool:
        if not self.remote:
            return os.path.exists(self._p(rel))
        # s3fs answers exists() from a cached listing of the parent (filled by any earlier ls): a file another
        # process created since would be missed (a worker re-did a batch another had just marked done)
        self.fs.invalidate_cache(self._p(rel))
        return self.fs.exists(self._p(rel))

    def isdir(self, rel: str | os.PathLike) -> bool:
        return self.fs.isdir(self._p(rel)) if self.remote else os.path.isdir(self._p(rel))

    def ls(self, rel: str | os.PathLike = "", dirs: bool | None = None) -> list[str]:
        """Names (not paths) directly under ``rel``, sorted; ``dirs`` True/False keeps only directories/files."""
        if self.remote:
            try:
                entries = self.fs.ls(self._p(rel), detail=True, refresh=True)
            except FileNotFoundError:
                return []
            out = [(PurePosixPath(e["name"]).name, e.get("type") == "directory") for e in entries]
        else:
            p = self._p(rel)
            if not os.path.isdir(p):
                return []
            out = [(e.name, e.is_dir()) for e in os.scandir(p)]
        return sorted(n for n, d in out if n and (dirs is None or d == dirs))

    def size(self, rel: str | os.PathLike) -> int:
        return int(self.fs.size(self._p(rel))) if self.remote else os.path.getsize(self._p(rel))

    def modified(self, rel: str | os.PathLike) -> float:
        """When ``rel`` was last written, as a POSIX timestamp (an object's ``LastModified`` when remote)."""
        if not self.remote:
            return os.path.getmtime(self._p(rel))
        return self.fs.modified(self._p(rel)).timestamp()

    def du(self, rel: str | os.PathLike) -> int:
        """Total bytes under ``rel`` (a file or a directory)."""
        if self.remote:
            return int(self.fs.du(self._p(rel))) if self.fs.exists(self._p(rel)) else 0
        p = Path(self._p(rel))
        if p.is_file():
            return p.stat().st_size
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0

    # reading
    def open(self, rel: str | os.PathLike, mode: str = "rb"):
        """An open file; writing modes create parent directories (prefer :meth:`write_bytes` for atomicity)."""
        if self.remote:
            return self.fs.open(self._p(rel), mode)
        p = self._p(rel)
        if any(c in mode for c in "wax"):
            os.makedirs(os.path.dirname(p), exist_ok=True)
        return open(p, mode)

    def read_bytes(self, rel: str | os.PathLike) -> bytes:
        with self.open(rel, "rb") as f:
            return f.read()

    def read_text(self, rel: str | os.PathLike) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def read_json(self, rel: str | os.PathLike, default=None):
        """Parsed JSON at ``rel``, or ``default`` when it does not exist."""
        try:
            return json.loads(self.read_bytes(rel))
        except FileNotFoundError:
            return default
        except OSError as e:  # s3fs: removed between the open and the read
            if type(e).__name__ == "FileExpired":
                return default
            raise

    # writing
    def write_bytes(self, rel: str | os.PathLike, data: bytes | str) -> None:
        """Write a whole file atomically (readers see the old content or the new one, never a part)."""
        data = data.encode() if isinstance(data, str) else data
        if self.remote:
            with self.fs.open(self._p(rel), "wb") as f:
                f.write(data)
            return
        p = Path(self._p(rel))
        tmp = _complete_temp_file(p, data, fsync=True)
        try:
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)

    def create(self, rel: str | os.PathLike, data: bytes | str) -> bool:
        """Create ``rel`` with ``data`` only if it does not exist (a conditional create: put-if-absent on
        object storage, a hard link of a complete temporary file locally). True when this call created it."""
        data = data.encode() if isinstance(data, str) else data
        if self.remote:
            try:
                with self.fs.open(self._p(rel), "xb") as f:
                    f.write(data)
                return True
            except FileExistsError:
                return False
            except (ValueError, NotImplementedError) as e:
                raise CurateError(f"{self.base}: this filesystem cannot create files conditionally ({e}); "
                                  "curate needs put-if-absent for its locks.") from None
        p = Path(self._p(rel))
        tmp = _complete_temp_file(p, data)
        try:
            os.link(tmp, p)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, local: str | os.PathLike, rel: str | os.PathLike) -> None:
        """Copy a local file to ``rel`` (moved into place atomically on local roots)."""
        if self.remote:
            self.fs.put_file(str(local), self._p(rel))
            return
        p = Path(self._p(rel))
        if os.path.abspath(local) == str(p):
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{p.name}")
        try:
            shutil.copyfile(local, tmp)
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)

    def rm(self, rel: str | os.PathLike, recursive: bool = False) -> None:
        """Remove a file (or, ``recursive``, a directory); missing ones are fine."""
        p = self._p(rel)
        if self.remote:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(p, recursive=recursive)
            return
        if os.path.isdir(p) and recursive:
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    # local copies for tools that need real files
    @contextlib.contextmanager
    def local_copy(self, rel: str | os.PathLike) -> Iterator[Path]:
        """A local file with the content of ``rel``: the file itself on local roots, else a download into
        the scratch directory, removed on exit."""
        if not self.remote:
            yield self.local_path(rel)
            return
        name = PurePosixPath(self.clean(rel)).name
        with scratch_file(suffix="-" + name, size=self.size(rel)) as tmp:
            self.fs.get_file(self._p(rel), str(tmp))
            yield tmp

    def cached_copy(self, rel: str | os.PathLike) -> Path:
        """A local file with ``rel``'s content for this process to read: the file itself on local roots,
        else a download kept in the scratch directory's cache (see :class:`_MediaCache`)."""
        if not self.remote:
            return self.local_path(rel)
        rel = self.clean(rel)
        return _CACHE.get(self.url(rel), self.size(rel), lambda p: self.fs.get_file(self._p(rel), str(p)))

    @contextlib.contextmanager
    def local_dir(self, rel: str | os.PathLike) -> Iterator[Path]:
        """A local directory whose files end up under ``rel``: the directory itself on local roots; on
        remote ones a scratch directory whose files are uploaded on a clean exit (then removed)."""
        if not self.remote:
            p = self.local_path(rel)
            p.mkdir(parents=True, exist_ok=True)
            yield p
            return
        rel = self.clean(rel)
        with scratch_tree() as d:
            yield d
            for f in sorted(d.rglob("*")):
                if f.is_file() and not f.name.startswith(".tmp-"):
                    self.put_file(f, f"{rel}/{f.relative_to(d).as_posix()}")

    @contextlib.contextmanager
    def local_output(self, rel: str | os.PathLike) -> Iterator[Path]:
        """A local file to write; on a clean exit it becomes ``rel`` (renamed, or uploaded when remote)."""
        name = PurePosixPath(self.clean(rel)).name
        if not self.remote:
            p = self.local_path(rel)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{name}")
            try:
                yield tmp
                if tmp.exists():
                    os.replace(tmp, p)
            finally:
                tmp.unlink(missing_ok=True)
            return
        with scratch_file(suffix="-" + name) as tmp:
            yield tmp
            if tmp.exists():
                self.put_file(tmp, rel)


def _complete_temp_file(p: Path, data: bytes, fsync: bool = False) -> Path:
    """``data`` written to a temporary file beside ``p`` (same directory, so a rename or a hard link puts it
    in place atomically); the caller moves it and removes what is left."""
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{p.name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
