"""The dataset root and its tables.

A root is a local directory or any fsspec URL (``s3://bucket/prefix``, ``gs://``, ``az://``, ``file://``);
see :mod:`curate.storage` for the file API and the scratch directory. Every table (``sources``, ``clips``,
``scores``, ``embeddings/<name>``, ``features/<name>``, ...) is a `Lance <https://lancedb.github.io/lance/>`_
dataset in the directory of its name. Lance commits each write as a new version with a conditional
create of the version's manifest (put-if-absent on object storage), so several processes on several
machines append to and upsert (``merge_insert``) one table at once without any lock, and a crash leaves
at most unreferenced data files, never a half-written version. A commit that loses a race is retried
(:func:`retry_commit`). Appends add fragments; :meth:`Table.compact` merges them and removes old versions
(the maintenance step, ``curate compact``).

What still needs a single writer (a stage run over the whole root, a subset's card, an index build) takes
:meth:`Root.lock`: a lease file created conditionally under ``ROOT/.locks/``, never ``flock``.

A root written by curate before Lance (tables as directories of ``part-*.parquet``) is read transparently
and migrated table by table on its first write, or all at once by ``curate migrate``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from curate.errors import CurateError, StageBusy
from curate.faults import crashpoint
from curate.storage import Location, is_remote, lance_storage_options

os.environ.setdefault("LANCE_LOG", "error")  # not "No existing dataset ..., it will be created" on every new table

__all__ = ["SCHEMAS", "Root", "Table", "retry_commit", "stable_id"]


def stable_id(*parts: str, length: int = 16) -> str:
    """A short, stable hex id derived from content (URL, source id + frame range, ...)."""
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return h[:length]


STR = pa.string()
F64 = pa.float64()
I64 = pa.int64()

SCHEMAS: dict[str, pa.Schema] = {
    "sources": pa.schema([
        ("source_id", STR), ("url", STR), ("caption", STR), ("title", STR), ("meta", STR),
        ("start_s", F64), ("end_s", F64),
        ("status", STR), ("error", STR), ("error_kind", STR), ("attempts", I64),
        ("media_path", STR), ("info_path", STR),
        ("duration_s", F64), ("fps", F64), ("width", I64), ("height", I64), ("codec", STR), ("num_frames", I64),
        ("updated_at", F64),
    ]),
    "clips": pa.schema([
        ("clip_id", STR), ("source_id", STR), ("clip_index", I64),
        ("start_s", F64), ("end_s", F64), ("start_frame", I64), ("end_frame", I64), ("duration_s", F64),
        ("caption", STR), ("splitter", STR), ("status", STR), ("error", STR), ("updated_at", F64),
    ]),
}

KEYS = {"sources": "source_id", "clips": "clip_id", "scores": "clip_id"}


def embedding_schema() -> pa.Schema:
    return pa.schema([
        ("clip_id", STR), ("video_emb", pa.list_(pa.float32())), ("text_emb", pa.list_(pa.float32())),
        ("status", STR), ("error", STR), ("updated_at", F64),
    ])


def caption_schema() -> pa.Schema:
    """``captions/<name>``: one generated caption per clip (see :mod:`curate.caption`)."""
    return pa.schema([
        ("clip_id", STR), ("caption", STR), ("captioner", STR), ("model", STR), ("weights", STR), ("prompt", STR),
        ("generation", STR), ("tokens", I64), ("seconds", F64), ("status", STR), ("error", STR), ("updated_at", F64),
    ])


# -- plain files (local paths; stages use Root's file API, which also covers object storage) ----------

def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write one Parquet file atomically (temporary name in the same directory, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_bytes_atomic(data: bytes | str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order and types (missing ones null)."""
    cols = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


#: row groups of Parquet files written by curate (selections, exports) hold up to this many rows or bytes
ROW_GROUP_ROWS = 65536
ROW_GROUP_BYTES = 64 << 20


def write_row_groups(writer: pq.ParquetWriter, batches) -> None:
    """Write record batches as row groups of about ``ROW_GROUP_ROWS`` rows / ``ROW_GROUP_BYTES`` bytes."""
    buf: list[pa.RecordBatch] = []
    rows = size = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        buf.append(batch)
        rows += batch.num_rows
        size += batch.nbytes
        if rows >= ROW_GROUP_ROWS or size >= ROW_GROUP_BYTES:
            writer.write_table(pa.Table.from_batches(buf), row_group_size=rows)
            buf, rows, size = [], 0, 0
    if buf:
        writer.write_table(pa.Table.from_batches(buf), row_group_size=rows)


# -- commits ----------------------------------------------------------------------------------------

_RETRYABLE = ("too many concurrent writers", "retryable commit conflict", "commit conflict",
              "conflicting", "already exists", "preempted")


def _is_retryable(e: BaseException) -> bool:
    try:
        from lance.commit import CommitConflictError
    except ImportError:  # pragma: no cover
        CommitConflictError = ()  # noqa: N806
    if CommitConflictError and isinstance(e, CommitConflictError):
        return bool(getattr(e, "retryable", True))
    return isinstance(e, (OSError, RuntimeError, ValueError)) and any(s in str(e).lower() for s in _RETRYABLE)


#: attempts of one commit before the error is raised (each after a random exponential wait, at most 5 s)
COMMIT_ATTEMPTS = int(os.environ.get("CURATE_COMMIT_ATTEMPTS", "30"))


def retry_commit(fn: Callable[[], object]):
    """Run ``fn`` (one Lance write that commits a version), again when it lost a race with another writer
    ("Too many concurrent writers", a retryable commit conflict, a table created by someone else first)."""
    import tenacity

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_retryable),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=5),
        stop=tenacity.stop_after_attempt(COMMIT_ATTEMPTS), reraise=True,
    )(fn)


def _not_found(e: BaseException) -> bool:
    s = str(e).lower()
    return "not found" in s or "does not exist" in s or "no such file" in s


class Table:
    """One table under the dataset root: a Lance dataset (a directory with ``_versions/`` and ``data/``).

    ``location`` is its directory (a local path or URL); ``key`` the column that identifies a row;
    ``schema`` the columns every write is conformed to (None: the columns of what is written, as for
    ``scores``, whose columns grow with the scorers run)."""

    def __init__(self, location: str | os.PathLike, key: str, schema: pa.Schema | None = None,
                 storage_options: dict[str, str] | None = None) -> None:
        self.uri = str(location).rstrip("/") if is_remote(location) else str(Path(str(location).removeprefix("file://")).resolve())
        self.path = self.uri if is_remote(self.uri) else Path(self.uri)
        self.key = key
        self.schema = schema
        self.storage_options = storage_options if storage_options is not None else lance_storage_options(self.uri)
        self._loc = Location(self.uri)

    def __repr__(self) -> str:
        return f"Table({self.uri!r})"

    # -- reading
    def dataset(self, version: int | str | None = None):
        """The Lance dataset (a ``pyarrow.dataset.Dataset``: ``to_table``, ``to_batches``, ``schema``...), or a
        plain Arrow dataset over the parts of a table written by an older curate, or None if there is none."""
        import lance

        try:
            return lance.dataset(self.uri, version=version, storage_options=self.storage_options)
        except (ValueError, OSError, FileNotFoundError) as e:
            if not _not_found(e):
                raise
        return self._legacy_dataset()

    def lance(self):
        """The Lance dataset, or None (a legacy table is migrated first)."""
        self.migrate()
        d = self.dataset()
        return d if d is not None and not isinstance(d, ds.FileSystemDataset) else None

    def exists(self) -> bool:
        return self.dataset() is not None

    def version(self) -> int | None:
        """The current version (a number that changes with every commit), None without a table."""
        d = self.dataset()
        return None if d is None or isinstance(d, ds.FileSystemDataset) else d.version

    def _empty(self, columns: list[str] | None) -> pa.Table:
        schema = self.schema or pa.schema([(self.key, STR)])
        cols = columns or schema.names
        return pa.table({c: pa.array([], type=schema.field(c).type if c in schema.names else STR) for c in cols})

    def read_arrow(self, columns: list[str] | None = None, filter: ds.Expression | None = None) -> pa.Table:
        d = self.dataset()
        if d is None:
            return self._empty(columns)
        if isinstance(d, ds.FileSystemDataset):
            return _read_legacy(d, self.key, columns, filter)
        return d.to_table(columns=columns, filter=filter)

    def read(self, columns: list[str] | None = None, filter: ds.Expression | None = None):
        return self.read_arrow(columns, filter).to_pandas()

    def keys(self) -> set[str]:
        return set(self.read_arrow(columns=[self.key])[self.key].to_pylist())

    def count(self) -> int:
        d = self.dataset()
        return 0 if d is None else d.count_rows()

    def iter_batches(self, columns: list[str] | None = None, filter: ds.Expression | None = None,
                     batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        d = self.dataset()
        if d is None:
            return iter(())
        if isinstance(d, ds.FileSystemDataset):
            return iter(_read_legacy(d, self.key, columns, filter).to_batches(max_chunksize=batch_size))
        return d.to_batches(columns=columns, filter=filter, batch_size=batch_size)

    # -- writing
    def _conform(self, table: pa.Table) -> pa.Table:
        return table if self.schema is None else conform(table, self.schema)

    def _write(self, table: pa.Table, mode: str) -> None:
        import lance

        lance.write_dataset(with_primary_key(table, self.key), self.uri, mode=mode,
                            storage_options=self.storage_options)

    def insert_missing(self, table: pa.Table) -> int:
        """Insert the rows whose keys the table does not hold yet, in one commit; returns how many.
        Concurrent inserts of one key from several processes keep one row (the key column is Lance's
        primary key, whose commits check inserted keys against each other)."""
        if table.num_rows == 0:
            return 0
        table = _keep_last(table, self.key) if has_duplicates(table[self.key]) else table
        table = _no_null_types(self._conform(table))
        self.migrate()
        self._ensure(table.schema)

        def go():
            d = self.lance()
            t = with_primary_key(_cast_to(table, d.schema), self.key)
            return d.merge_insert(self.key).when_not_matched_insert_all().execute(t)["num_inserted_rows"]

        return int(retry_commit(go))

    def _ensure(self, schema: pa.Schema) -> None:
        """Create the table (empty, with ``schema``) unless it exists. Of several processes creating it at
        once, one does (a conditional create of ``_creating`` elects it; the others wait for it): two
        concurrent first commits of a new dataset on object storage could otherwise both land as version 1."""
        if self._exists():
            return
        marker = "_creating"
        deadline = time.time() + 120
        while not self._exists():
            if self._loc.create(marker, json.dumps({"host": _HOST, "pid": os.getpid(), "at": time.time()})):
                try:
                    if not self._exists():
                        self._write(with_primary_key(schema.empty_table(), self.key), "create")
                finally:
                    self._loc.rm(marker)
                return
            info = None
            with contextlib.suppress(ValueError):
                info = self._loc.read_json(marker)
            if info is not None and (time.time() - float(info.get("at", 0)) > 60 or (
                    info.get("host") == _HOST and not _alive(info))):
                self._loc.rm(marker)  # its creator died before finishing
                continue
            if time.time() > deadline:
                raise CurateError(f"Timed out waiting for another process to create the table {self.uri}; "
                                  f"if none is running, delete {self._loc.url(marker)}.")
            time.sleep(0.2)

    def _exists(self) -> bool:
        return self._loc.exists("_versions") and bool(self._loc.ls("_versions"))

    def append(self, table: pa.Table) -> None:
        """Add rows whose keys are new (the caller guarantees it), in one commit."""
        if table.num_rows == 0:
            return
        table = _no_null_types(self._conform(table))
        self.migrate()
        self._ensure(table.schema)
        retry_commit(lambda: self._write(table, "append"))

    def upsert(self, table: pa.Table) -> None:
        """Insert or replace rows by key, in one commit (``merge_insert``: no file is rewritten, concurrent
        upserts from other processes are merged or retried by Lance)."""
        if table.num_rows == 0:
            return
        table = _keep_last(table, self.key) if has_duplicates(table[self.key]) else table
        table = _no_null_types(self._conform(table))
        self.migrate()
        self._ensure(table.schema)

        def go():
            d = self._add_columns(self.lance(), table)
            t = with_primary_key(_cast_to(table, d.schema), self.key)
            d.merge_insert(self.key).when_matched_update_all().when_not_matched_insert_all().execute(t)

        retry_commit(go)
        crashpoint("upsert")

    def _add_columns(self, d, table: pa.Table):
        """Columns of ``table`` the dataset lacks are added (all null: metadata only, no data rewritten)."""
        missing = [f for f in table.schema if f.name not in d.schema.names]
        if not missing:
            return d
        d.add_columns([pa.field(f.name, f.type if not pa.types.is_null(f.type) else STR) for f in missing])
        return self.lance()

    def rewrite(self, table: pa.Table) -> None:
        """Replace the whole table with ``table`` (one new version; readers of older versions unaffected)."""
        table = self._conform(table)
        retry_commit(lambda: self._write(table, "overwrite"))
        self._drop_legacy_parts()
        crashpoint("rewrite")

    def delete(self, predicate: str) -> None:
        """Delete the rows matching a SQL ``predicate`` (one commit)."""
        d = self.lance()
        if d is not None:
            retry_commit(lambda: self.lance().delete(predicate))

    # -- maintenance
    def fragments(self) -> int:
        """Data fragments (each append adds one; :meth:`compact` merges them)."""
        d = self.lance()
        return 0 if d is None else len(d.get_fragments())

    def compact(self, force: bool = False, older_than: timedelta | None = None) -> dict:
        """Merge small fragments (Lance ``compact_files``) and remove versions older than ``older_than``
        (default ``CURATE_KEEP_VERSIONS_S`` seconds, 3600: a reader that opened a version before keeps it;
        tagged versions are always kept). Safe while others write: a conflicting commit is retried."""
        d = self.lance()
        if d is None:
            return {}
        out: dict = {}
        if force or len(d.get_fragments()) > 1:
            m = retry_commit(lambda: self.lance().optimize.compact_files())
            out["fragments_removed"] = getattr(m, "fragments_removed", 0)
            out["fragments_added"] = getattr(m, "fragments_added", 0)
        crashpoint("compact")
        if older_than is None:
            older_than = timedelta(seconds=float(os.environ.get("CURATE_KEEP_VERSIONS_S", "3600")))
        stats = self.lance().cleanup_old_versions(older_than=older_than, error_if_tagged_old_versions=False)
        out["old_versions"] = getattr(stats, "old_versions", 0)
        out["bytes_removed"] = getattr(stats, "bytes_removed", 0)
        return out

    def maybe_compact(self, max_fragments: int = 64) -> None:
        """Compact when appends left many fragments (each costs a little on every read)."""
        with contextlib.suppress(OSError, RuntimeError):
            if self.fragments() > max_fragments:
                self.compact()

    def repair(self) -> None:
        """Nothing to repair with Lance (a crash leaves no partial version); kept for callers."""

    def tidy(self, fanout: int = 16) -> list:
        """Nothing to do with Lance (appends are fragments; :meth:`compact` merges them); kept for callers."""
        return []

    # -- tables written by curate before Lance: directories of part-*.parquet
    def legacy_parts(self) -> list[str]:
        if self._loc.exists("_versions"):
            return []
        return [n for n in self._loc.ls("", dirs=False) if n.startswith("part-") and n.endswith(".parquet")]

    def _legacy_dataset(self):
        parts = self.legacy_parts()
        if not parts:
            return None
        files = [self._loc.url(p) for p in parts]
        if self._loc.remote:
            fs = pa.fs.PyFileSystem(pa.fs.FSSpecHandler(self._loc.fs))
            files = [self._loc._p(p) for p in parts]
        else:
            fs = None
        schema = self.schema
        if schema is None:
            schema = pa.unify_schemas([pq.read_schema(f, filesystem=fs) for f in files], promote_options="permissive")
        return ds.dataset(files, schema=schema, format="parquet", filesystem=fs)

    def migrate(self) -> int:
        """Turn a table of ``part-*.parquet`` (curate before Lance) into a Lance dataset; returns rows moved."""
        legacy = self._legacy_dataset()
        if legacy is None:
            return 0
        t = _read_legacy(legacy, self.key, None, None)
        if self.schema is not None:
            t = conform(t, self.schema)
        with contextlib.suppress(OSError, ValueError):  # a concurrent migration created it first: fine
            self._write(t, "create")
        self._drop_legacy_parts()
        return t.num_rows

    def _drop_legacy_parts(self) -> None:
        if self._loc.exists("_versions"):
            for p in [n for n in self._loc.ls("", dirs=False) if n.startswith("part-") and n.endswith(".parquet")]:
                self._loc.rm(p)


def _read_legacy(d: ds.Dataset, key: str, columns, filter) -> pa.Table:
    cols = columns
    if cols is not None and key not in cols:
        cols = [key, *cols]
    t = d.to_table(columns=cols, filter=filter)
    if has_duplicates(t[key]):
        t = _keep_last(t, key)
    if columns is not None and key not in columns:
        t = t.drop_columns([key])
    return t


#: field metadata that makes a column Lance's (unenforced) primary key: merge_insert commits then carry
#: the keys they inserted, so two concurrent inserts of one key conflict (and are retried) instead of
#: both landing
PRIMARY_KEY = {"lance-schema:unenforced-primary-key": "true"}


def with_primary_key(table: pa.Table, key: str) -> pa.Table:
    """``table`` with ``key`` marked as the primary key (non-null, with :data:`PRIMARY_KEY` metadata)."""
    i = table.schema.get_field_index(key)
    if i < 0:
        return table
    f = table.schema.field(i)
    if not f.nullable and f.metadata and f.metadata.get(b"lance-schema:unenforced-primary-key") == b"true":
        return table
    return table.cast(table.schema.set(i, pa.field(key, f.type, nullable=False, metadata=PRIMARY_KEY)))


def _no_null_types(table: pa.Table) -> pa.Table:
    """Columns of Arrow's null type (a scorer column that is all null) become strings: Lance needs a type."""
    if not any(pa.types.is_null(f.type) for f in table.schema):
        return table
    return pa.Table.from_arrays([c.cast(STR) if pa.types.is_null(c.type) else c for c in table.columns],
                                names=table.column_names)


def _cast_to(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table``'s columns cast to the types ``schema`` has for them (upserts into a typed dataset)."""
    cols = []
    for name in table.column_names:
        col = table[name]
        if name in schema.names and not col.type.equals(schema.field(name).type):
            col = col.cast(schema.field(name).type)
        cols.append(col)
    return pa.Table.from_arrays(cols, names=table.column_names)


def has_duplicates(keys) -> bool:
    """Whether a key column holds a value twice."""
    return len(keys) > 0 and len(pc.unique(keys)) != len(keys)


def _keep_last(t: pa.Table, key: str) -> pa.Table:
    """Keep the last row of each key (rows are in part order, so the newest part wins)."""
    idx = pa.array(range(t.num_rows))
    t2 = t.append_column("__row", idx)
    last = t2.group_by(key).aggregate([("__row", "max")])["__row_max"]
    return t.take(pc.take(last, pc.sort_indices(last)))  # those rows, in table order


# -- leases: single writers and claims without flock ---------------------------------------------------

#: a lease not renewed for this long is stale (its holder died on another machine); same-machine holders
#: are checked by process id at once
LEASE_TTL_S = float(os.environ.get("CURATE_LEASE_TTL_S", "300"))
_HOST = socket.gethostname()


def _alive(info: dict) -> bool:
    """Whether the holder of a lease (a dict read from its file) may still be working."""
    if info.get("host") == _HOST and isinstance(info.get("pid"), int):
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return float(info.get("expires", 0)) > time.time()


class Lease:
    """A small file created conditionally (put-if-absent): whoever created it holds what it names until
    it is released or stops renewing it (every ``ttl / 3`` s, by a daemon thread). A stale lease is taken
    over through one more conditional create, so of two processes that find the same stale lease only
    one takes it."""

    def __init__(self, loc: Location, rel: str, ttl: float = LEASE_TTL_S, renew: bool = True) -> None:
        self.loc, self.rel, self.ttl, self.renew = loc, rel, ttl, renew
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> str:
        return json.dumps({"host": _HOST, "pid": os.getpid(), "token": self.token,
                           "expires": time.time() + self.ttl, "holder": f"pid {os.getpid()} on {_HOST}"})

    def holder(self) -> dict | None:
        with contextlib.suppress(ValueError):
            return self.loc.read_json(self.rel)
        return {}

    def acquire(self) -> bool:
        for _ in range(3):
            if self.loc.create(self.rel, self._body()):
                self._start()
                return True
            info = self.holder()
            if info is None:  # released in between
                continue
            if _alive(info):
                return False
            if not self.loc.create(f"{self.rel}.takeover-{info.get('token', 'none')}", self._body()):
                return False  # someone else is taking this stale lease over
            self.loc.rm(self.rel)
            self.loc.rm(f"{self.rel}.takeover-{info.get('token', 'none')}")
        return False

    def _start(self) -> None:
        if not self.renew:
            return

        def beat():
            while not self._stop.wait(self.ttl / 3):
                with contextlib.suppress(Exception):
                    if (self.holder() or {}).get("token") == self.token:
                        self.loc.write_bytes(self.rel, self._body())

        self._thread = threading.Thread(target=beat, daemon=True, name=f"lease {self.rel}")
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if (self.holder() or {}).get("token") == self.token:
            self.loc.rm(self.rel)


class Root:
    """A dataset root: one directory (local or a URL) that holds every table, the media and the subsets."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.loc = Location(path)
        self.location = self.loc.base
        self.remote = self.loc.remote

    def __repr__(self) -> str:
        return f"Root({self.location!r})"

    def __str__(self) -> str:
        return self.location

    def __eq__(self, other) -> bool:
        return isinstance(other, Root) and other.location == self.location

    def __hash__(self) -> int:
        return hash(self.location)

    @property
    def path(self) -> Path:
        """The root as a local path (local roots only; use the file API below for both kinds)."""
        return self.loc.local_path()

    def ensure(self) -> Root:
        if not self.remote:
            self.path.mkdir(parents=True, exist_ok=True)
        return self

    # -- the file API (paths relative to the root; local directory or object storage alike)
    def url(self, rel: str | os.PathLike = "") -> str:
        """The URL (or absolute local path) of ``rel``."""
        return self.loc.url(rel)

    def open(self, rel: str | os.PathLike, mode: str = "rb"):
        return self.loc.open(rel, mode)

    def exists(self, rel: str | os.PathLike) -> bool:
        return self.loc.exists(rel)

    def ls(self, rel: str | os.PathLike = "", dirs: bool | None = None) -> list[str]:
        return self.loc.ls(rel, dirs)

    def read_bytes(self, rel: str | os.PathLike) -> bytes:
        return self.loc.read_bytes(rel)

    def read_text(self, rel: str | os.PathLike) -> str:
        return self.loc.read_text(rel)

    def read_json(self, rel: str | os.PathLike, default=None):
        return self.loc.read_json(rel, default)

    def write_bytes(self, rel: str | os.PathLike, data: bytes | str) -> None:
        self.loc.write_bytes(rel, data)

    def create(self, rel: str | os.PathLike, data: bytes | str) -> bool:
        return self.loc.create(rel, data)

    def put_file(self, local: str | os.PathLike, rel: str | os.PathLike) -> None:
        self.loc.put_file(local, rel)

    def rm(self, rel: str | os.PathLike, recursive: bool = False) -> None:
        self.loc.rm(rel, recursive)

    def du(self, rel: str | os.PathLike) -> int:
        return self.loc.du(rel)

    def local_copy(self, rel: str | os.PathLike):
        """Context manager: a local file with ``rel``'s content (downloaded to scratch when remote)."""
        return self.loc.local_copy(rel)

    def media_file(self, rel: str | os.PathLike) -> Path:
        """A local file to decode ``rel`` from: the file itself on a local root, a cached download in the
        scratch directory on a remote one."""
        return self.loc.cached_copy(rel)

    def local_dir(self, rel: str | os.PathLike):
        """Context manager: a local directory whose files end up under ``rel`` (uploaded when remote)."""
        return self.loc.local_dir(rel)

    def local_output(self, rel: str | os.PathLike):
        """Context manager: a local file to write that becomes ``rel`` on a clean exit."""
        return self.loc.local_output(rel)

    def write_parquet(self, table: pa.Table, rel: str | os.PathLike, **kwargs) -> None:
        """Write ``table`` as one Parquet file at ``rel`` (atomically)."""
        with self.local_output(rel) as tmp:
            pq.write_table(table, tmp, compression="zstd", **kwargs)

    def read_parquet(self, rel: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
        with self.open(rel, "rb") as f:
            return pq.read_table(f, columns=columns)

    def inside(self, *parts: str) -> Path:
        """A local path under the root (local roots only); anything outside it is refused."""
        return self.loc.local_path("/".join(parts))

    # -- tables
    def table(self, rel: str, key: str, schema: pa.Schema | None = None) -> Table:
        """The table stored at ``rel`` (e.g. ``features/clip``)."""
        return Table(self.url(rel), key, schema)

    @property
    def sources(self) -> Table:
        return self.table("sources", "source_id", SCHEMAS["sources"])

    @property
    def clips(self) -> Table:
        return self.table("clips", "clip_id", SCHEMAS["clips"])

    @property
    def scores(self) -> Table:
        return self.table("scores", "clip_id")

    def embeddings(self, name: str) -> Table:
        return self.table(f"embeddings/{_safe_name(name)}", "clip_id", embedding_schema())

    def embedding_names(self) -> list[str]:
        return self.ls("embeddings", dirs=True)

    def embedding_meta(self, name: str) -> dict:
        return self.read_json(f"embeddings/{_safe_name(name)}/_meta.json", {}) or {}

    def write_embedding_meta(self, name: str, meta: dict) -> bool:
        """Write ``embeddings/<name>/_meta.json`` unless it exists (a conditional create: of concurrent
        batches of one embedding run, the first writes it). True when this call wrote it."""
        rel = f"embeddings/{_safe_name(name)}/_meta.json"
        if self.exists(rel):
            return False
        return self.create(rel, json.dumps(meta, indent=2, default=str))

    def tables(self) -> list[str]:
        """Relative paths of every table under the root (Lance or legacy Parquet parts)."""
        out = [t for t in ("sources", "clips", "transitions", "scores") if self.exists(t)]
        for group in ("embeddings", "features", "captions", "score_parts"):
            out += [f"{group}/{n}" for n in self.ls(group, dirs=True)]
        return out

    def subset_rel(self, name: str) -> str:
        """The subset's directory, relative to the root (``subsets/<name>``)."""
        return f"subsets/{_safe_name(name)}"

    def captions(self, name: str) -> Table:
        """``captions/<name>``: the captions one captioner configuration generated (curate caption)."""
        return self.table(f"captions/{safe_name(name)}", "clip_id", caption_schema())

    def caption_names(self) -> list[str]:
        return [n for n in self.ls("captions", dirs=True) if not n.startswith(".")]

    def caption_meta(self, name: str) -> dict:
        """The configuration that made ``captions/<name>`` (captioner, options, model, weights, prompt, ...)."""
        return self.read_json(f"captions/{safe_name(name)}/_meta.json", {}) or {}

    def write_caption_meta(self, name: str, meta: dict) -> None:
        self.write_bytes(f"captions/{safe_name(name)}/_meta.json", json.dumps(meta, indent=2, default=str))

    def subset_dir(self, name: str) -> Path:
        """The subset's directory as a local path (local roots only: see :meth:`subset_rel`)."""
        return self.inside(self.subset_rel(name))

    def subset_names(self) -> list[str]:
        return [n for n in self.ls("subsets", dirs=True) if not n.startswith(".")]

    @property
    def media_dir(self) -> Path:
        return self.inside("media")

    # -- single writers and claims
    @contextlib.contextmanager
    def shared_run(self, stage: str) -> Iterator[SharedRun]:
        """Join the runs of a stage that may run side by side (ingest, split), on any machine: yields a
        :class:`SharedRun` whose :meth:`SharedRun.claim` gives each item to one run. Table writes need
        no lock (Lance commits them); a claim only saves a second run the same work."""
        run = SharedRun(self, stage)
        try:
            yield run
        finally:
            run.close()

    @contextlib.contextmanager
    def write_lock(self, table: str) -> Iterator[None]:
        """No lock any more: Lance commits concurrent appends and upserts safely. Kept for callers."""
        yield

    @contextlib.contextmanager
    def lock(self, stage: str) -> Iterator[None]:
        """Hold the lock of one stage on this root (a lease created conditionally under ``.locks/``,
        on object storage too); a second run of the same stage fails clearly."""
        lease = Lease(self.loc, f".locks/{_lock_name(stage)}.lock")
        if not lease.acquire():
            holder = (lease.holder() or {}).get("holder", "another process")
            raise StageBusy(
                f"Another `curate {stage}` is running on {self} ({holder}). Wait for it to finish; "
                "two runs of one stage on one root never run at once. (If that process is gone, its lease "
                f"expires after CURATE_LEASE_TTL_S={LEASE_TTL_S:.0f} s.)"
            )
        try:
            yield
        finally:
            lease.release()


def _lock_name(stage: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stage)


class SharedRun:
    """A process's membership in the concurrent runs of one stage (see :meth:`Root.shared_run`)."""

    first = True  # nothing to repair before others join any more

    def __init__(self, root: Root, stage: str) -> None:
        self.root, self.stage = root, _lock_name(stage)
        self._mutex = threading.Lock()
        self._run = Lease(root.loc, f".locks/{self.stage}.runs/{uuid.uuid4().hex}")
        self._run_started = False
        self._claimed: list[str] = []

    def ready(self) -> None:
        """Kept for callers: runs no longer wait for each other."""

    def claim(self, item: str) -> bool:
        """Claim ``item`` for this process until the run ends; False if a live run elsewhere has it.

        A conditional create of ``.locks/<stage>.claims/<item>`` naming this run; a claim whose run is
        gone (its process died on this machine, or its lease expired) is taken over."""
        with self._mutex:
            if not self._run_started:
                self._run.acquire()
                self._run_started = True
            rel = f".locks/{self.stage}.claims/{_lock_name(item)}"
            if rel in self._claimed:
                return True
            body = json.dumps({"run": self._run.rel, "host": _HOST, "pid": os.getpid()})
            for _ in range(2):
                if self.root.create(rel, body):
                    self._claimed.append(rel)
                    return True
                try:
                    info = self.root.read_json(rel)
                except ValueError:
                    info = {}
                if info is None:
                    continue
                run = None
                with contextlib.suppress(ValueError):
                    run = self.root.read_json(info.get("run") or ".locks/none", None)
                if run is not None and _alive(run):
                    return False
                self.root.rm(rel)  # its run is gone: take it over
            return False

    def close(self) -> None:
        for rel in self._claimed:
            self.root.rm(rel)
        if self._run_started:
            self._run.release()


def check_name(name: str) -> str:
    """``name`` if it is a safe subset / embedding-set / captions-set name, else a :class:`CurateError`."""
    return safe_name(name)


def safe_name(name: str) -> str:
    """Names of subsets/embedding sets become directory names: keep them to a safe alphabet."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}", name or "") or ".." in name:
        raise CurateError(
            f"Invalid name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit."
        )
    return name


def rows_to_table(rows: Iterable[dict], schema: pa.Schema) -> pa.Table:
    rows = list(rows)
    return pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()


_safe_name = safe_name  # the name older modules import


def table_at(root: Root, name: str) -> Table:
    """The table named ``name`` under ``root`` (``sources``, ``clips``, ``scores``, ``embeddings/<n>``,
    ``features/<n>``, or any other directory that holds one)."""
    kind, _, sub = name.strip("/").partition("/")
    if kind in ("sources", "clips", "scores") and not sub:
        return getattr(root, kind)
    if kind == "transitions" and not sub:
        from curate.split import transitions_table

        return transitions_table(root)
    if kind == "embeddings" and sub:
        return root.embeddings(sub)
    if kind == "captions" and sub:
        return root.captions(sub)
    if kind == "features" and sub:
        from curate.features import SCHEMA

        return root.table(f"features/{safe_name(sub)}", "source_id", SCHEMA)
    rel = Location.clean(name)
    if not rel or not (root.exists(f"{rel}/_versions") or Table(root.url(rel), "clip_id").legacy_parts()):
        known = ", ".join(root.tables()) or "none"
        raise CurateError(f"No table {name!r} under {root} (tables: {known}).")
    return root.table(rel, "source_id" if kind == "sources" else "clip_id")


def maintain(root: Root | str | os.PathLike, tables: Iterable[str] | None = None,
             older_than: timedelta | None = None) -> list[str]:
    """Table maintenance of a root, run once after its writers are done (``curate compact``, the DAG's
    maintenance task): merges each table's fragments (Lance ``compact_files``) and removes versions older
    than ``older_than`` (default ``CURATE_KEEP_VERSIONS_S``, an hour). Safe while others write: a commit
    that conflicts is retried. ``tables``: names such as ``"clips"`` or ``"embeddings/clip"`` (default:
    every table of the root). Returns the tables it compacted."""
    root = root if isinstance(root, Root) else Root(root)
    done = []
    for name in (list(tables) if tables is not None else root.tables()):
        table = table_at(root, name)
        if table.lance() is None:
            continue
        table.compact(older_than=older_than)
        done.append(name)
    return done


def export_table(root: Root | str | os.PathLike, name: str, out: str | os.PathLike,
                 version: int | None = None) -> int:
    """Write table ``name`` (optionally as of ``version``) as one plain Parquet file at ``out`` (a local
    path or URL), streamed batch by batch; returns the rows written."""
    root = root if isinstance(root, Root) else Root(root)
    table = table_at(root, name)
    d = table.dataset(version) if version is not None else table.dataset()
    if d is None:
        raise CurateError(f"Table {name!r} under {root} is empty.")
    if is_remote(out):
        parent, _, rel = str(out).rstrip("/").rpartition("/")
    else:
        p = Path(out).expanduser().resolve()
        parent, rel = str(p.parent), p.name
    loc = Location(parent)
    rows = 0
    with loc.local_output(rel) as tmp, pq.ParquetWriter(tmp, d.schema, compression="zstd") as writer:
        def batches():
            nonlocal rows
            for b in d.to_batches(batch_size=ROW_GROUP_ROWS):
                rows += b.num_rows
                yield b

        write_row_groups(writer, batches())
    return rows


def migrate(root: Root | str | os.PathLike) -> dict[str, int]:
    """Turn every table of a root written by curate before Lance (``part-*.parquet``) into a Lance dataset;
    returns {table: rows moved}. Tables already in Lance are left as they are."""
    root = root if isinstance(root, Root) else Root(root)
    out = {}
    for name in root.tables():
        table = table_at(root, name)
        if table.legacy_parts():
            out[name] = table.migrate()
    return out
