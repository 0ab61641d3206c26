"""Ingest: register sources from a list and fetch their media into ``ROOT/media``.

http(s) URLs go through yt-dlp's Python API (never its command line, so a URL can never become an
option); local paths and ``file://`` URLs are copied in (hard-linked when possible). Each source is
probed with ffprobe. Failures become ``status="error"`` rows with a readable ``error`` and an
``error_kind``; transient kinds (network, rate limits) are retried with exponential backoff and
jitter, and ``retry_errors=True`` re-queues the retryable error rows of earlier runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import urlparse

from curate.faults import crashpoint
from curate.media.fetch import RETRYABLE_KINDS, IngestError, check_allowed, copy_local, fetch_url, local_path, short_error
from curate.media.video import MediaError, probe
from curate.progress import NullProgress, Progress, StageResult
from curate.stages.sources import clean_value, register_sources
from curate.store import SCHEMAS, Root, rows_to_table
from curate.store.storage import scratch_tree

#: a temporary copy in ROOT/media older than this is a crashed run's leftover (seconds)
STALE_TMP_S = 3600


def ingest_one(root: Root, row: dict, *, allow_local: bool = True, local_dirs=None, max_height=None,
               max_filesize=None, max_duration=None, socket_timeout: float = 30.0, retries: int = 2,
               backoff_s: float = 2.0) -> dict:
    """Fetch and probe one source; returns the updated row (status ok or error). Never raises for bad input."""
    out = dict(row)
    out["attempts"] = int(row.get("attempts") or 0) + 1
    out["updated_at"] = time.time()
    sid, url = row["source_id"], row.get("url") or ""
    with _media_workdir(root) as mdir:  # the media directory itself, or a scratch one for a remote root
        stem = mdir / sid
        uploaded: list[str] = []
        try:
            media, info_json = _fetch(root, url, stem, allow_local=allow_local, local_dirs=local_dirs,
                                      max_height=max_height, max_filesize=max_filesize, socket_timeout=socket_timeout,
                                      retries=retries, backoff_s=backoff_s,
                                      segment=(row.get("start_s"), row.get("end_s")))
            try:
                pr = probe(media)
            except MediaError as e:
                raise IngestError("corrupt", str(e)) from None
            if max_duration and pr.duration_s > max_duration:
                raise IngestError("too_long", f"duration {pr.duration_s:.1f} s is over max_duration={max_duration} s")
            if root.remote:
                for f in (media, info_json):
                    if f is not None:
                        root.put_file(f, f"media/{f.name}")
                        uploaded.append(f"media/{f.name}")
            out.update(status="ok", error=None, error_kind=None,
                       media_path=f"media/{media.name}",
                       info_path=f"media/{info_json.name}" if info_json else None,
                       duration_s=pr.duration_s, fps=pr.fps, width=pr.width, height=pr.height, codec=pr.codec,
                       num_frames=pr.num_frames)
            if info_json and not row.get("title"):
                try:
                    out["title"] = json.loads(info_json.read_text()).get("title")
                except (OSError, ValueError):
                    pass
        except IngestError as e:
            out.update(status="error", error=str(e), error_kind=e.kind)
        except Exception as e:  # never let one source sink the batch
            out.update(status="error", error=short_error(f"{type(e).__name__}: {e}"), error_kind="download_failed")
        if out["status"] == "error":  # nothing unusable is kept: media, info JSON, yt-dlp .part/.ytdl leftovers
            for leftover in mdir.glob(f"{sid}.*"):
                leftover.unlink(missing_ok=True)
            for rel in uploaded:
                root.rm(rel)
    return out


@contextlib.contextmanager
def _media_workdir(root: Root) -> Iterator[Path]:
    """Where a source is downloaded: ``ROOT/media`` on a local root; a scratch directory (uploaded from,
    then removed) on a remote one."""
    if root.remote:
        with scratch_tree() as d:
            yield d
        return
    root.media_dir.mkdir(parents=True, exist_ok=True)
    yield root.media_dir


def _fetch(root: Root, url: str, stem: Path, *, allow_local, local_dirs, max_height, max_filesize,
           socket_timeout, retries, backoff_s, segment) -> tuple[Path, Path | None]:
    if not url:
        raise IngestError("invalid_url", "empty url")
    if url.startswith("-"):
        raise IngestError("invalid_url", f"url starts with '-': {url[:80]!r} (refused: it could be read as an option)")
    if any(ord(c) < 32 for c in url):
        raise IngestError("invalid_url", "url contains control characters")
    scheme = urlparse(url).scheme.lower() if "://" in url else ""
    if scheme in ("http", "https"):
        attempt = 0
        while True:
            try:
                media, info_json, _ = fetch_url(url, stem, max_height=max_height, max_filesize=max_filesize,
                                                socket_timeout=socket_timeout, segment=segment)
                return media, info_json
            except IngestError as e:
                if e.kind not in RETRYABLE_KINDS or attempt >= retries:
                    raise
                attempt += 1
                time.sleep(backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random()))
    if scheme in ("", "file"):
        path = local_path(url)
        check_allowed(path, allow_local, local_dirs)
        return copy_local(path, stem, max_filesize), None
    raise IngestError("invalid_url", f"unsupported URL scheme {scheme!r} (use http, https, file or a local path)")


def ingest(root: Root | str, sources: str | os.PathLike | Sequence[str] | None = None, *,
           source_ids: Iterable[str] | None = None, workers: int = 4, max_height: int | None = None,
           max_filesize: int | None = None, max_duration: float | None = None, retry_errors: bool = False,
           allow_local: bool = True, local_dirs: Sequence[str] | None = None, socket_timeout: float = 30.0,
           retries: int = 2, backoff_s: float = 2.0, flush_every: int = 32,
           progress: Progress | None = None) -> StageResult:
    """Register ``sources`` (if given) and fetch every pending source (or only ``source_ids``).

    Idempotent: ok rows are skipped, error rows too unless ``retry_errors`` (then only the
    retryable kinds are tried again). Results are written every ``flush_every`` sources, so a crash
    loses at most that much work and a rerun finishes the rest.
    """
    root = Root(root) if not isinstance(root, Root) else root
    progress = progress or NullProgress()
    result = StageResult("ingest")
    with root.ensure().shared_run("ingest") as run:
        if not root.remote and root.media_dir.is_dir():  # copies a crashed run left half-done
            for tmp in root.media_dir.glob(".tmp-*"):
                with contextlib.suppress(OSError):
                    if time.time() - tmp.stat().st_mtime > STALE_TMP_S:
                        tmp.unlink()
        if sources is not None:
            ids = register_sources(root, sources)
            if source_ids is None:
                source_ids = ids
        table = root.sources.read()
        wanted = set(source_ids) if source_ids is not None else None
        todo = []
        for row in table.to_dict(orient="records"):
            if wanted is not None and row["source_id"] not in wanted:
                continue
            st = row.get("status")
            if st == "ok" or (st == "error" and not (retry_errors and row.get("error_kind") in RETRYABLE_KINDS)):
                result.skipped += 1
                continue
            todo.append({k: clean_value(v) for k, v in row.items()})
        result.total = len(todo)
        progress.start(len(todo), "ingest")
        lock = threading.Lock()
        pending: list[dict] = []

        def flush() -> None:
            if pending:
                root.sources.upsert(rows_to_table(pending, SCHEMAS["sources"]))
                pending.clear()
                crashpoint("ingest-flush")

        kwargs = dict(allow_local=allow_local, local_dirs=local_dirs, max_height=max_height,
                      max_filesize=max_filesize, max_duration=max_duration, socket_timeout=socket_timeout,
                      retries=retries, backoff_s=backoff_s)

        def work(row: dict) -> dict | None:
            # a concurrent ingest of this root may have claimed it: it is theirs to finish
            return ingest_one(root, row, **kwargs) if run.claim(row["source_id"]) else None

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(work, row) for row in todo]
            for fut in as_completed(futures):
                out = fut.result()
                with lock:
                    if out is None:
                        result.total -= 1
                        result.skipped += 1
                    else:
                        pending.append(out)
                        if out["status"] == "ok":
                            result.ok += 1
                        else:
                            result.add_error(out["url"][:120] or out["source_id"], f"[{out['error_kind']}] {out['error']}")
                        if len(pending) >= flush_every:
                            flush()
                progress.advance()
        flush()
    return result.done()
