"""Tables: one Lance dataset per table, appends and upserts (merge_insert) with commit retries, reads,
compaction; atomic writes of plain files. The shapes of the built-in tables are :mod:`curate.store.schemas`'."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.faults import crashpoint
from curate.store.leases import HOST, holder_alive
from curate.store.schemas import STR
from curate.store.storage import Location, is_remote, lance_storage_options

#: key lists longer than this are not sent to Lance as a scan filter (see :meth:`Table._iter_keyed`)
KEYS_IN_SCAN_MAX = 20_000

os.environ.setdefault("LANCE_LOG", "error")  # not "No existing dataset ..., it will be created" on every new table



def stable_id(*parts: str, length: int = 16) -> str:
    """A short, stable hex id derived from content (URL, source id + frame range, ...)."""
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return h[:length]


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
                     batch_size: int = 65536, keys: pa.Array | None = None, readahead: int | None = None
                     ) -> Iterator[pa.RecordBatch]:
        """The rows (passing ``filter``; whose key is one of ``keys`` when given) in table order, in batches of at
        most ``batch_size`` rows. ``readahead``: batches Lance decodes ahead (None: its default, about 1 GB of
        vectors in flight; 2 halves the peak memory of a vector scan and is no slower on local disks). Up to
        :data:`KEYS_IN_SCAN_MAX` keys go to the scan as an ``isin`` filter; more are matched here
        (:meth:`_iter_keyed`), with a row mask instead of Lance's plan of the filter."""
        d = self.dataset()
        if d is None:
            return iter(())
        if keys is not None and (len(keys) <= KEYS_IN_SCAN_MAX or isinstance(d, ds.FileSystemDataset)):
            has = pc.field(self.key).isin(keys)
            filter, keys = (has if filter is None else filter & has), None
        if isinstance(d, ds.FileSystemDataset):
            return iter(_read_legacy(d, self.key, columns, filter).to_batches(max_chunksize=batch_size))
        ahead = {} if readahead is None else {"batch_readahead": readahead, "fragment_readahead": 1}
        if keys is None:
            return d.to_batches(columns=columns, filter=filter, batch_size=batch_size, **ahead)
        return self._iter_keyed(d, columns, filter, batch_size, keys, ahead)

    def _iter_keyed(self, d, columns: list[str] | None, filter, batch_size: int, keys: pa.Array, ahead: dict
                    ) -> Iterator[pa.RecordBatch]:
        """Many keys: one scan of the key column (with ``filter``) and one hash lookup give a row mask; a second
        scan of the same version with the same filter, in the same order, keeps the masked rows. (Lance plans
        an ``isin`` of N strings with about 1.5 KB per key, kept after the scan: 15 GiB for 10M keys.)"""
        seen = d.to_table(columns=[self.key], filter=filter)[self.key]
        seen = seen.combine_chunks() if isinstance(seen, pa.ChunkedArray) else seen
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        mask = pc.is_in(seen, value_set=keys.cast(seen.type)).to_numpy(zero_copy_only=False)
        cols = list(columns) if columns is not None else list(d.schema.names)
        read = cols if self.key in cols else [*cols, self.key]
        pos = 0
        for b in d.to_batches(columns=read, filter=filter, batch_size=batch_size, **ahead):
            n = b.num_rows
            if not seen.slice(pos, n).equals(b.column(self.key)):
                raise CurateError(f"{self.uri}: the table changed order between two scans of one version; read again")
            m = mask[pos:pos + n]
            pos += n
            if not m.any():
                continue
            b = b if m.all() else b.filter(pa.array(m))
            yield b if read == cols else b.select(cols)

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
            if self._loc.create(marker, json.dumps({"host": HOST, "pid": os.getpid(), "at": time.time()})):
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
                    info.get("host") == HOST and not holder_alive(info))):
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


def rows_to_table(rows: Iterable[dict], schema: pa.Schema) -> pa.Table:
    rows = list(rows)
    return pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()


