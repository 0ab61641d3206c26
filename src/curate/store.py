"""The dataset root and its Parquet tables.

A table is a directory of ``part-*.parquet`` files that ``pandas.read_parquet(ROOT / name)`` opens.
Writes are atomic: a part is written under a hidden temporary name (``.tmp-*``, which pyarrow and
pandas skip) and renamed into place. An *upsert* writes the new rows as a new part and then rewrites
the older parts that held the same keys without them, one atomic rename per part, so a reader never
sees a half-written file; a crash between the two steps leaves a duplicate key that the next write
(or :meth:`Table.read`) resolves in favour of the newest part.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from curate.errors import CurateError, StageBusy
from curate.faults import crashpoint

__all__ = ["SCHEMAS", "Root", "Table", "stable_id"]


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


def _part_name() -> str:
    return f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write one Parquet file atomically (temporary name in the same directory, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_batches_atomic(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch],
                         keep: Callable[[], bool] | None = None) -> bool:
    """Stream record batches into one Parquet file atomically (row groups of a useful size, fsync, rename).

    ``keep``, asked once everything is written, may discard the file instead (returns False then)."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            write_row_groups(writer, batches)
        if keep is not None and not keep():
            return False
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order and types (missing ones null)."""
    cols = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def write_bytes_atomic(data: bytes | str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


#: row groups of compacted parts hold up to this many rows or bytes (a part appended per source holds
#: a few rows: written one batch at a time, every reader would pay for thousands of tiny row groups)
ROW_GROUP_ROWS = 65536
ROW_GROUP_BYTES = 64 << 20


#: parts merged at once by Table.tidy; tier k holds parts of about 1 MiB * fanout**(k-1)
TIDY_FANOUT = 16
TIDY_BASE_BYTES = 1 << 20


def _tier(size: int, fanout: int) -> int:
    tier = 0
    while size >= TIDY_BASE_BYTES * fanout ** tier:
        tier += 1
    return tier


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


class Table:
    """One Parquet table (a directory of parts) under the dataset root."""

    def __init__(self, path: Path, key: str, schema: pa.Schema | None = None) -> None:
        self.path = path
        self.key = key
        self.schema = schema

    def parts(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.glob("part-*.parquet"))

    def exists(self) -> bool:
        return bool(self.parts())

    def dataset(self) -> ds.Dataset | None:
        parts = self.parts()
        if not parts:
            return None
        schema = self.schema
        if schema is None:
            schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
        return ds.dataset([str(p) for p in parts], schema=schema, format="parquet")

    def read_arrow(self, columns: list[str] | None = None, filter: ds.Expression | None = None) -> pa.Table:
        """Read the table; a key present in several parts (after a crash) resolves to the newest part."""
        d = self.dataset()
        if d is None:
            schema = self.schema or pa.schema([(self.key, STR)])
            cols = columns or schema.names
            return pa.table({c: pa.array([], type=schema.field(c).type if c in schema.names else STR) for c in cols})
        cols = columns
        if cols is not None and self.key not in cols:
            cols = [self.key, *cols]
        t = d.to_table(columns=cols, filter=filter)
        if _has_duplicates(t[self.key]):
            t = _keep_last(t, self.key)
        if columns is not None and self.key not in columns:
            t = t.drop_columns([self.key])
        return t

    def read(self, columns: list[str] | None = None, filter: ds.Expression | None = None):
        return self.read_arrow(columns, filter).to_pandas()

    def keys(self) -> set[str]:
        d = self.dataset()
        if d is None:
            return set()
        return set(d.to_table(columns=[self.key])[self.key].to_pylist())

    def iter_batches(self, columns: list[str] | None = None, filter: ds.Expression | None = None,
                     batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
        d = self.dataset()
        if d is None:
            return iter(())
        return d.to_batches(columns=columns, filter=filter, batch_size=batch_size)

    def _conform(self, table: pa.Table) -> pa.Table:
        return table if self.schema is None else conform(table, self.schema)

    def append(self, table: pa.Table) -> Path | None:
        """Add rows whose keys are new (the caller guarantees it). Returns the new part."""
        if table.num_rows == 0:
            return None
        path = self.path / _part_name()
        write_table_atomic(self._conform(table), path)
        return path

    def upsert(self, table: pa.Table) -> None:
        """Insert or replace rows by key: new part first, then older parts rewritten without those keys."""
        if table.num_rows == 0:
            return
        table = _keep_last(table, self.key) if _has_duplicates(table[self.key]) else table
        old_parts = self.parts()
        new_part = self.append(table)
        crashpoint("upsert")  # a crash here leaves a key twice: repair() (or read()) keeps the newest
        keys = pa.array(table[self.key].to_pylist(), type=STR)
        for part in old_parts:
            if part == new_part:
                continue
            ids = pq.read_table(part, columns=[self.key])[self.key]
            hit = pa.compute.is_in(ids, value_set=keys)
            if not pa.compute.any(hit).as_py():
                continue
            old = pq.read_table(part)
            keep = old.filter(pa.compute.invert(hit))
            if keep.num_rows:
                write_table_atomic(keep, part)
            else:
                part.unlink()

    def rewrite(self, table: pa.Table) -> None:
        """Replace the whole table with ``table`` (one new part; old parts removed after)."""
        old_parts = self.parts()
        new_part = self.path / _part_name()
        write_table_atomic(self._conform(table), new_part)
        crashpoint("rewrite")
        for p in old_parts:
            p.unlink(missing_ok=True)

    def repair(self) -> None:
        """After a crash: drop temporary files and resolve keys left in two parts. Call under the stage lock."""
        if self.path.is_dir():
            for tmp in self.path.glob(".tmp-*"):
                tmp.unlink(missing_ok=True)
        d = self.dataset()
        if d is not None:
            keys = d.to_table(columns=[self.key])[self.key]
            if _has_duplicates(keys):
                self.compact()

    def compact(self, force: bool = False) -> None:
        """Merge the parts into one (and resolve duplicate keys left by a crash); ``force`` rewrites a
        single part too (into row groups of a useful size).

        Streams batch by batch into one new part when keys are unique, so memory stays bounded;
        with duplicates (a crash mid-upsert) it reads the table to keep the newest row of each key.
        """
        parts = self.parts()
        if not parts or (len(parts) == 1 and not force):
            return
        d = self.dataset()
        keys = d.to_table(columns=[self.key])[self.key]
        if _has_duplicates(keys):
            self.rewrite(self.read_arrow())
            return
        write_batches_atomic(self.path / _part_name(), d.schema,
                             d.to_batches(batch_size=ROW_GROUP_ROWS, batch_readahead=2, fragment_readahead=1))
        crashpoint("compact")
        for p in parts:
            p.unlink(missing_ok=True)

    def tidy(self, fanout: int = TIDY_FANOUT) -> list[tuple[list[Path], Path]]:
        """Size-tiered merging for tables written a few rows at a time (a part per source, per flush).

        When ``fanout`` consecutive parts (in write order) are in the same size tier, they are merged,
        streaming, into one part that takes the place of the newest of them; so a table of N appends
        keeps about ``fanout * log(N)`` parts, and each row is rewritten about ``log(N)`` times. Readers
        pay memory and time per part (Arrow datasets keep state per file: ~40 MiB per 1,000 parts), so
        part counts must not grow with the dataset. Call it under the lock that serialises the table's
        writers. Returns the merges done: [(inputs, output)].
        """
        merges: list[tuple[list[Path], Path]] = []
        while True:
            parts = self.parts()
            if len(parts) < fanout:
                return merges
            tiers = [_tier(p.stat().st_size, fanout) for p in parts]
            run, i = None, 0
            for j in range(1, len(parts) + 1):
                if j == len(parts) or tiers[j] != tiers[i]:
                    if j - i >= fanout:
                        run = parts[i:i + fanout]
                        break
                    i = j
            if run is None:
                return merges
            merged = self._merge(run)
            if merged is None:
                return merges
            merges.append((run, merged))

    def _merge(self, parts: list[Path]) -> Path | None:
        """Merge consecutive ``parts`` into one, named after the newest so that the order of parts (which
        decides the newest row of a key after a crash) does not change."""
        schema = pq.read_schema(parts[0])
        if any(not pq.read_schema(p).equals(schema) for p in parts[1:]):
            return None  # parts written with other schemas: compact() unifies them
        stamp = parts[-1].name.split("-")[1] if parts[-1].name.count("-") >= 2 else f"{time.time_ns():020d}"
        new_part = self.path / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        write_batches_atomic(new_part, schema,
                             (b for p in parts for b in pq.ParquetFile(p).iter_batches(batch_size=ROW_GROUP_ROWS)))
        crashpoint("tidy")  # a crash here leaves rows twice: reads keep one, repair() merges
        for p in parts:
            p.unlink(missing_ok=True)
        return new_part

    def maybe_compact(self, max_parts: int = 16) -> None:
        """Compact when appends left many small parts (each open part costs memory and time on every read),
        or when the one part is split into many tiny row groups (as older versions of compact wrote it)."""
        parts = self.parts()
        if len(parts) > max_parts:
            self.compact()
        elif len(parts) == 1:
            md = pq.ParquetFile(parts[0]).metadata
            if md.num_row_groups > 64 and md.num_rows < md.num_row_groups * (ROW_GROUP_ROWS // 4):
                self.compact(force=True)


def _has_duplicates(keys) -> bool:
    return len(keys) > 0 and len(pa.compute.unique(keys)) != len(keys)


def _keep_last(t: pa.Table, key: str) -> pa.Table:
    """Keep the last row of each key (rows are in part order, so the newest part wins)."""
    idx = pa.array(range(t.num_rows))
    t2 = t.append_column("__row", idx)
    last = t2.group_by(key).aggregate([("__row", "max")])["__row_max"]
    return t.take(pa.compute.take(last, pa.compute.sort_indices(last)))  # those rows, in table order


class Root:
    """A dataset root: one directory that holds every table, the media and the published subsets."""

    def __init__(self, path: str | os.PathLike) -> None:
        p = str(path)
        if "://" in p and not p.startswith("file://"):
            raise CurateError(
                f"Dataset root {p!r}: only local paths are supported by this version "
                "(mount object storage with a FUSE driver such as s3fs/gcsfuse and pass the mount point)."
            )
        self.path = Path(p.removeprefix("file://")).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Root({str(self.path)!r})"

    def ensure(self) -> Root:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def inside(self, *parts: str) -> Path:
        """A path under the root; anything that would resolve outside it is refused."""
        p = (self.path.joinpath(*parts)).resolve()
        if p != self.path and self.path not in p.parents:
            raise CurateError(f"Refusing path outside the dataset root: {'/'.join(parts)!r}")
        return p

    @property
    def sources(self) -> Table:
        return Table(self.path / "sources", "source_id", SCHEMAS["sources"])

    @property
    def clips(self) -> Table:
        return Table(self.path / "clips", "clip_id", SCHEMAS["clips"])

    @property
    def scores(self) -> Table:
        return Table(self.path / "scores", "clip_id")

    def embeddings(self, name: str) -> Table:
        return Table(self.inside("embeddings", _safe_name(name)), "clip_id", embedding_schema())

    def embedding_names(self) -> list[str]:
        d = self.path / "embeddings"
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def embedding_meta(self, name: str) -> dict:
        p = self.inside("embeddings", _safe_name(name), "_meta.json")
        return json.loads(p.read_text()) if p.exists() else {}

    def captions(self, name: str) -> Table:
        """``captions/<name>``: the captions one captioner configuration generated (curate caption)."""
        return Table(self.inside("captions", _safe_name(name)), "clip_id", caption_schema())

    def caption_names(self) -> list[str]:
        d = self.path / "captions"
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []

    def caption_meta(self, name: str) -> dict:
        """The configuration that made ``captions/<name>`` (captioner, options, model, weights, prompt, ...)."""
        p = self.inside("captions", _safe_name(name), "_meta.json")
        return json.loads(p.read_text()) if p.exists() else {}

    def write_caption_meta(self, name: str, meta: dict) -> None:
        write_bytes_atomic(json.dumps(meta, indent=2, default=str), self.inside("captions", _safe_name(name), "_meta.json"))

    def subset_dir(self, name: str) -> Path:
        return self.inside("subsets", _safe_name(name))

    def subset_names(self) -> list[str]:
        d = self.path / "subsets"
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []

    @property
    def media_dir(self) -> Path:
        return self.path / "media"

    @contextlib.contextmanager
    def shared_run(self, stage: str) -> Iterator[SharedRun]:
        """Join the runs of a stage that may run side by side (ingest, split): yields a :class:`SharedRun`.

        The first process in (the only one able to lock the stage exclusively) gets ``first=True`` and
        may repair the tables (remove temporary files, resolve keys a crash left twice) before it
        downgrades to a shared lock; later processes wait for that and skip the repair. Table writes
        go under :meth:`write_lock`; each item is claimed with :meth:`SharedRun.claim`.
        """
        d = self.path / ".locks"
        d.mkdir(parents=True, exist_ok=True)
        f = open(d / f"{stage}.run.lock", "a+")
        claims = open(d / f"{stage}.items.lock", "a+")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                first = True
            except BlockingIOError:
                fcntl.flock(f, fcntl.LOCK_SH)  # waits while the first run repairs
                first = False
            yield SharedRun(self, f, claims, first)
        finally:
            claims.close()  # releases every item claimed by this process
            f.close()

    @contextlib.contextmanager
    def write_lock(self, table: str) -> Iterator[None]:
        """Exclusive lock for mutating one table (short: held for one append/upsert/compaction)."""
        d = self.path / ".locks"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{table}.write.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def lock(self, stage: str) -> Iterator[None]:
        """Hold the lock of one stage on this root; a second run of the same stage fails clearly."""
        d = self.path / ".locks"
        d.mkdir(parents=True, exist_ok=True)
        f = open(d / f"{stage}.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StageBusy(
                f"Another `curate {stage}` is running on {self.path} ({holder}). Wait for it to finish; "
                "two runs of one stage on one root never run at once."
            ) from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}")
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()


class SharedRun:
    """A process's membership in the concurrent runs of one stage (see :meth:`Root.shared_run`)."""

    def __init__(self, root: Root, run_file, claims_file, first: bool) -> None:
        self.root, self._run, self._claims, self.first = root, run_file, claims_file, first
        self._mutex = __import__("threading").Lock()

    def ready(self) -> None:
        """The first run calls this after its repair: the others may start."""
        if self.first:
            fcntl.flock(self._run, fcntl.LOCK_SH)  # downgrade: concurrent runs now join

    def claim(self, item: str) -> bool:
        """Claim ``item`` (a hex id) for this process until the run ends; False if another process has it.

        A POSIX record lock on one byte of a shared file, at an offset taken from the id: no lock file
        per item, released by the kernel when the process exits (a crash never leaves a stale claim).
        """
        offset = int(item[:12], 16) if all(c in "0123456789abcdef" for c in item[:12]) and len(item) >= 12 \
            else int(stable_id(item)[:12], 16)
        with self._mutex:
            try:
                fcntl.lockf(self._claims, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                return True
            except OSError:
                return False


def check_name(name: str) -> str:
    """``name`` if it is a safe subset / embedding-set / captions-set name, else a :class:`CurateError`."""
    return _safe_name(name)


def _safe_name(name: str) -> str:
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


def maintain(root: Root | str | os.PathLike, tables: Iterable[str] | None = None) -> list[str]:
    """Table maintenance of a root, run ONCE after its writers are done (never inside per-batch work).

    Per-batch work (mapped Airflow tasks, ``--shard i/n`` processes) only appends new rows, each batch
    its own sources' rows, so it needs no lock and leaves many small parts; this merges them (size-tiered,
    then into one part when they are still many), drops temporary files a killed writer left and resolves
    keys a crash left twice. ``tables``: names such as ``"clips"`` or ``"embeddings/clip"`` (default: every
    table of the root). Whole-root runs of the stages call it at their end; the pipeline DAG's
    ``maintain`` task calls it after the batches. Returns the tables it looked at.
    """
    root = root if isinstance(root, Root) else Root(root)
    if tables is None:
        tables = ["sources", "clips", *(f"embeddings/{n}" for n in root.embedding_names())]
        staged = root.path / "score_parts"
        tables += sorted(f"score_parts/{p.name}" for p in staged.iterdir() if p.is_dir()) if staged.is_dir() else []
    done = []
    for name in tables:
        kind, _, sub = name.partition("/")
        if kind in ("sources", "clips"):
            table = getattr(root, kind)
        elif kind == "embeddings":
            table = root.embeddings(sub)
        elif kind == "score_parts":
            table = Table(root.inside("score_parts", _safe_name(sub)), "clip_id")
        else:
            raise CurateError(f"maintain: unknown table {name!r}")
        if not table.exists():
            continue
        with root.write_lock(name.replace("/", "-")):  # the lock split/ingest take around their appends
            table.repair()
            table.tidy()
            table.maybe_compact()
        done.append(name)
    return done
