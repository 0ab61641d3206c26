"""The dataset root: its tables, media, subsets and locks, and the root-wide maintenance (compact, export,
migrate)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError, StageBusy
from curate.store.leases import LEASE_TTL_S, Lease, SharedRun, lock_name
from curate.store.names import safe_name
from curate.store.schemas import FEATURES_SCHEMA, SCHEMAS, TRANSITIONS_SCHEMA, caption_schema, embedding_schema
from curate.store.storage import Location, is_remote
from curate.store.tables import ROW_GROUP_ROWS, Table, write_row_groups


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

    def modified(self, rel: str | os.PathLike) -> float:
        """When ``rel`` was last written (POSIX timestamp)."""
        return self.loc.modified(rel)

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

    @property
    def transitions(self) -> Table:
        """``transitions``, one row per transition: frames [start_frame, end_frame) are a dissolve or a fade (kind
        ``gradual``) and belong to no clip; a hard cut (kind ``cut``) lies just before ``start_frame`` (an empty or
        one- or two-frame span)."""
        return self.table("transitions", "transition_id", TRANSITIONS_SCHEMA)

    def features(self, name: str) -> Table:
        """``features/<name>``: per-source frame features (``curate features``)."""
        return self.table(f"features/{safe_name(name)}", "source_id", FEATURES_SCHEMA)

    def embeddings(self, name: str) -> Table:
        return self.table(f"embeddings/{safe_name(name)}", "clip_id", embedding_schema())

    def embedding_names(self) -> list[str]:
        return self.ls("embeddings", dirs=True)

    def embedding_meta(self, name: str) -> dict:
        return self.read_json(f"embeddings/{safe_name(name)}/_meta.json", {}) or {}

    def write_embedding_meta(self, name: str, meta: dict) -> bool:
        """Write ``embeddings/<name>/_meta.json`` unless it exists (a conditional create: of concurrent
        batches of one embedding run, the first writes it). True when this call wrote it."""
        return self.create_json(f"embeddings/{safe_name(name)}/_meta.json", meta)

    def create_json(self, rel: str, data: dict) -> bool:
        """Write ``rel`` as JSON unless it exists (a conditional create); True when this call wrote it."""
        if self.exists(rel):
            return False
        return self.create(rel, json.dumps(data, indent=2, default=str))

    def tables(self) -> list[str]:
        """Relative paths of every table under the root (Lance or legacy Parquet parts)."""
        out = [t for t in ("sources", "clips", "transitions", "scores") if self.exists(t)]
        for group in ("embeddings", "features", "captions", "score_parts"):
            out += [f"{group}/{n}" for n in self.ls(group, dirs=True)]
        return out

    def subset_rel(self, name: str) -> str:
        """The subset's directory, relative to the root (``subsets/<name>``)."""
        return f"subsets/{safe_name(name)}"

    def captions(self, name: str) -> Table:
        """``captions/<name>``: the captions one captioner configuration generated (curate caption)."""
        return self.table(f"captions/{safe_name(name)}", "clip_id", caption_schema())

    def caption_names(self) -> list[str]:
        return [n for n in self.ls("captions", dirs=True) if not n.startswith(".")]

    def caption_meta(self, name: str) -> dict:
        """The configuration that made ``captions/<name>`` (captioner, options, model, weights, prompt, ...)."""
        return self.read_json(f"captions/{safe_name(name)}/_meta.json", {}) or {}

    def write_caption_meta(self, name: str, meta: dict) -> bool:
        """Write ``captions/<name>/_meta.json`` unless it exists (a conditional create: of concurrent
        batches of one captions set, the first writes it). True when this call wrote it."""
        return self.create_json(f"captions/{safe_name(name)}/_meta.json", meta)

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
        lease = Lease(self.loc, f".locks/{lock_name(stage)}.lock")
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



def table_at(root: Root, name: str) -> Table:
    """The table named ``name`` under ``root`` (``sources``, ``clips``, ``scores``, ``embeddings/<n>``,
    ``features/<n>``, or any other directory that holds one)."""
    kind, _, sub = name.strip("/").partition("/")
    if kind in ("sources", "clips", "scores", "transitions") and not sub:
        return getattr(root, kind)
    if kind == "embeddings" and sub:
        return root.embeddings(sub)
    if kind == "captions" and sub:
        return root.captions(sub)
    if kind == "features" and sub:
        return root.features(sub)
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

