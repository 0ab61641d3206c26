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
import math
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from curate.errors import CurateError
from curate.faults import crashpoint
from curate.media.video import MediaError, probe
from curate.progress import NullProgress, Progress, StageResult
from curate.store import SCHEMAS, Root, rows_to_table, stable_id
from curate.store.storage import scratch_tree

LIST_SUFFIXES = {".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".txt"}
VIDEO_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}")

#: a temporary copy in ROOT/media older than this is a crashed run's leftover (seconds)
STALE_TMP_S = 3600

#: error kinds a later run may fix; the others are permanent for that input
RETRYABLE_KINDS = {"network", "timeout", "rate_limited", "bot_check", "download_failed"}

ERROR_KINDS = {
    "invalid_url": "the URL/path is malformed, starts with '-', or uses an unsupported scheme",
    "not_allowed": "a local path outside the directories this run may read",
    "not_found": "a local file that does not exist",
    "unavailable": "removed, private, geo-blocked or HTTP 404/410 (permanent)",
    "rate_limited": "HTTP 429 / too many requests (retryable)",
    "bot_check": "the site asked to sign in / confirm you are not a bot (retryable later, maybe with cookies)",
    "network": "connection refused/reset, DNS failure, redirect loop, HTTP 5xx (retryable)",
    "timeout": "the server stalled (retryable)",
    "unsupported": "no extractor / not a media URL",
    "too_large": "over --max-filesize",
    "too_long": "over --max-duration",
    "corrupt": "downloaded but not a decodable video (no video stream, truncated, not media)",
    "download_failed": "other download error (retryable)",
}


class IngestError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------- source lists
def read_source_list(path: str | os.PathLike) -> Any:
    """Read a CSV/TSV/JSONL/JSON/Parquet/TXT list with a ``url`` column into a DataFrame of strings."""
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise CurateError(f"Source list {str(p)!r} does not exist.")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(p)
        elif suffix in (".jsonl", ".ndjson"):
            df = pd.read_json(p, lines=True, dtype=False, encoding_errors="replace")
        elif suffix == ".json":
            df = pd.read_json(p, dtype=False, encoding_errors="replace")
        elif suffix == ".txt":
            lines = [ln.strip() for ln in p.read_text(errors="replace").splitlines()]
            df = pd.DataFrame({"url": [ln for ln in lines if ln and not ln.startswith("#")]})
        else:
            df = pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                             encoding_errors="replace")
    except Exception as e:
        raise CurateError(f"Cannot read source list {str(p)!r}: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    if "url" not in df.columns:
        raise CurateError(f"Source list {str(p)!r} has no 'url' column (columns: {', '.join(df.columns)}).")
    return df


def _clean(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, str):
        v = v.strip()
        return v or None
    return v


def _seg(v: Any) -> float | None:
    v = _clean(v)
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def source_rows(df) -> list[dict]:
    """One row per distinct source (url + optional segment); other columns go to ``meta`` as JSON."""
    core = {"url", "caption", "title", "start_s", "end_s"}
    rows, seen = [], set()
    for rec in df.to_dict(orient="records"):
        url = _clean(rec.get("url"))
        url = "" if url is None else str(url)
        start, end = _seg(rec.get("start_s")), _seg(rec.get("end_s"))
        sid = stable_id(url, "" if start is None else f"{start:.3f}", "" if end is None else f"{end:.3f}")
        if sid in seen:
            continue
        seen.add(sid)
        caption = _clean(rec.get("caption"))
        meta = {k: _clean(v) for k, v in rec.items() if k not in core}
        rows.append({
            "source_id": sid, "url": url, "caption": None if caption is None else str(caption),
            "title": None if _clean(rec.get("title")) is None else str(rec.get("title")),
            "meta": json.dumps(meta, ensure_ascii=False, default=str) if meta else None,
            "start_s": start, "end_s": end, "status": "pending", "attempts": 0, "updated_at": time.time(),
        })
    return rows


def register_sources(root: Root | str, sources: str | os.PathLike | Sequence[str]) -> list[str]:
    """Add the sources of a list file (or URLs/paths given directly) as ``pending`` rows; return their ids.

    Sources already in the table (same URL and segment) are left as they are, so a list can be
    ingested again, or extended, without duplicating anything.
    """
    import pandas as pd

    root = Root(root) if not isinstance(root, Root) else root
    root.ensure()
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    frames = []
    for item in items:
        s = str(item)
        if Path(s).suffix.lower() in LIST_SUFFIXES and Path(s).exists():
            frames.append(read_source_list(s))
        else:  # a single URL or media path
            frames.append(pd.DataFrame({"url": [s]}))
    rows = source_rows(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"url": []}))
    known = root.sources.keys()
    new = [r for r in rows if r["source_id"] not in known]
    root.sources.insert_missing(rows_to_table(new, SCHEMAS["sources"]))
    return [r["source_id"] for r in rows]


# ----------------------------------------------------------------------------- licence and provenance
#: what a published clip says about where it comes from: the source list's column of that name when it has
#: one, else the field of yt-dlp's info JSON (sites that state a licence: YouTube's Creative Commons
#: uploads, Vimeo, Wikimedia Commons...)
PROVENANCE = ("license", "uploader", "channel", "webpage_url")


def provenance_of(meta: dict | None, info: dict | None) -> dict[str, str | None]:
    """``{license, uploader, channel, webpage_url}`` of one source: ``meta`` (the source list's own columns)
    first, then ``info`` (yt-dlp's info JSON); None where neither says."""
    out: dict[str, str | None] = {}
    for k in PROVENANCE:
        v = _clean((meta or {}).get(k))
        if v is None:
            v = _clean((info or {}).get(k))
        out[k] = None if v is None else str(v)
    return out


def source_provenance(root: Root, rows: Iterable[dict], workers: int = 8) -> dict[str, dict[str, str | None]]:
    """:func:`provenance_of` of each source row (``source_id``, ``meta`` as stored, ``info_path``), by source id.

    The info JSON is read only for the sources whose list leaves a field unset (it is in ``ROOT/media`` beside
    the media: a few reads next to the media the caller cuts anyway)."""
    rows = list(rows)
    metas = {}
    for r in rows:
        try:
            metas[r["source_id"]] = json.loads(r["meta"]) if r.get("meta") else {}
        except ValueError:
            metas[r["source_id"]] = {}

    def one(r: dict) -> tuple[str, dict]:
        meta = metas[r["source_id"]]
        info = None
        if r.get("info_path") and any(_clean(meta.get(k)) is None for k in PROVENANCE):
            try:
                info = root.read_json(r["info_path"])
            except (OSError, ValueError):
                info = None  # an unreadable info JSON: the fields are unknown, the clip is still published
        return r["source_id"], provenance_of(meta, info)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(pool.map(one, rows))


def clip_url(url: str | None, start_s: float | None, end_s: float | None) -> str | None:
    """The URL of a clip: its source's page (or media) URL with the clip's time range as a W3C media fragment
    (``#t=12.5,17``), which browsers' players and many sites honour; None without an http(s) URL."""
    if not url or not url.startswith(("http://", "https://")):
        return None
    base = url.split("#", 1)[0]
    if start_s is None:
        return base
    frag = f"{float(start_s):.3f}".rstrip("0").rstrip(".") or "0"
    if end_s is not None:
        frag += "," + (f"{float(end_s):.3f}".rstrip("0").rstrip(".") or "0")
    return f"{base}#t={frag}"


def license_key(value: str | None) -> str:
    """How licences are compared (``--license``, the card's counts): trimmed, lower case, runs of spaces and
    underscores as one hyphen; ``unknown`` for a source without one."""
    if value is None or not str(value).strip():
        return "unknown"
    return re.sub(r"[\s_]+", "-", str(value).strip().lower())


# ----------------------------------------------------------------------------- fetching
def classify_download_error(message: str) -> str:
    m = message.lower()
    # hosts, ports and URLs carry digits ("port=42977", "host:4290/") that must not read as a status code
    status = re.sub(r"\S*://\S*|port=\d+|:\d+", " ", m)
    if re.search(r"(?<!\d)429(?!\d)", status) or "too many requests" in m or "rate-limit" in m or "rate limit" in m:
        return "rate_limited"
    if "sign in to confirm" in m or "not a bot" in m or "captcha" in m:
        return "bot_check"
    if "larger than max-filesize" in m or "file is larger" in m:
        return "too_large"
    if "unsupported url" in m or "no video formats" in m or "unable to extract" in m:
        return "unsupported"
    if any(s in m for s in ("http error 404", "http error 410", "http error 403", "private video", "video unavailable",
                             "has been removed", "not available", "this video is unavailable", "members-only")):
        return "unavailable"
    if "timed out" in m or "timeout" in m or "read operation timed out" in m:
        return "timeout"
    if any(s in m for s in ("connection refused", "connection reset", "errno", "name or service not known",
                             "temporary failure", "redirect", "http error 5", "remote end closed", "incomplete read",
                             "unable to download webpage", "urlopen error", "connection aborted", "broken pipe")):
        return "network"
    return "download_failed"


def _short(message: str) -> str:
    message = re.sub(r"\x1b\[[0-9;]*m", "", message).replace("ERROR: ", "").strip()
    return message.splitlines()[0][:500] if message else "unknown error"


class _YtdlpLogger:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, msg: str) -> None:
        if "max-filesize" in msg:  # yt-dlp reports the size limit on its debug channel and returns normally
            self.errors.append(msg)

    info = debug
    warning = debug

    def error(self, msg: str) -> None:
        self.errors.append(msg)


def fetch_url(url: str, dest_stem: Path, *, max_height: int | None, max_filesize: int | None,
              socket_timeout: float, segment: tuple[float | None, float | None] | None = None) -> tuple[Path, Path | None, dict]:
    """Download one URL with yt-dlp into ``dest_stem.<ext>``; returns (media, info_json, info)."""
    import yt_dlp

    if max_height:
        fmt = (f"bv*[height<={max_height}]+ba/b[height<={max_height}]/bv*[height<={max_height}]"
               f"/wv*+ba/w")
    else:
        fmt = "bv*+ba/b"
    logger = _YtdlpLogger()
    opts: dict[str, Any] = {
        "outtmpl": {"default": str(dest_stem) + ".%(ext)s"},
        "format": fmt, "merge_output_format": "mp4",
        "writeinfojson": True, "noplaylist": True, "overwrites": True, "continuedl": False,
        "quiet": True, "no_warnings": True, "noprogress": True, "logger": logger,
        "socket_timeout": socket_timeout, "retries": 2, "fragment_retries": 2, "extractor_retries": 1,
        "file_access_retries": 1, "noresizebuffer": True, "cachedir": False, "color": {"stderr": "never"},
    }
    if max_filesize:
        opts["max_filesize"] = int(max_filesize)
    if segment and (segment[0] is not None or segment[1] is not None):
        from yt_dlp.utils import download_range_func

        start = segment[0] or 0.0
        end = segment[1] if segment[1] is not None else float("inf")
        opts["download_ranges"] = download_range_func(None, [(start, end)])
        opts["force_keyframes_at_cuts"] = True  # re-encode at the cuts: the media starts exactly at start_s
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(url, download=True)
    except yt_dlp.utils.DownloadError as e:
        msg = _short(str(e))
        raise IngestError(classify_download_error(msg), msg) from None
    except Exception as e:  # extractor bugs, socket errors raised raw
        msg = _short(f"{type(e).__name__}: {e}")
        raise IngestError(classify_download_error(msg), msg) from None
    if info is None:
        raise IngestError("download_failed", _short("; ".join(logger.errors) or "yt-dlp returned nothing"))
    downloads = info.get("requested_downloads") or []
    media = Path(downloads[0]["filepath"]) if downloads and downloads[0].get("filepath") else None
    if media is None or not media.exists():
        joined = "; ".join(logger.errors)
        if "max-filesize" in joined or "larger" in joined:
            raise IngestError("too_large", f"file is larger than max_filesize={max_filesize} bytes")
        raise IngestError("download_failed", _short(joined or "yt-dlp produced no file"))
    info_json = dest_stem.parent / (dest_stem.name + ".info.json")
    return media, (info_json if info_json.exists() else None), info


def _local_path(url: str) -> Path:
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise IngestError("invalid_url", f"file:// URL with a host is not supported: {url!r}")
        return Path(unquote(parsed.path))
    return Path(url).expanduser()


def copy_local(src: Path, dest_stem: Path, max_filesize: int | None) -> Path:
    if not src.exists():
        raise IngestError("not_found", f"no such file: {str(src)!r}")
    if not src.is_file():
        raise IngestError("invalid_url", f"not a regular file: {str(src)!r}")
    size = src.stat().st_size
    if max_filesize and size > max_filesize:
        raise IngestError("too_large", f"file is {size} bytes, over max_filesize={max_filesize}")
    suffix = src.suffix.lower() if VIDEO_SUFFIX.fullmatch(src.suffix or "") else ".bin"
    dst = dest_stem.with_name(dest_stem.name + suffix)
    if dst.exists() and os.path.samefile(src, dst):  # linked by a run that crashed before saving its row
        return dst
    tmp = dst.with_name(".tmp-" + dst.name)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    tmp.replace(dst)
    tmp.unlink(missing_ok=True)  # rename() is a no-op when both names are links to one file
    return dst


def _check_allowed(path: Path, allow_local: bool, local_dirs: Sequence[str | os.PathLike] | None) -> None:
    if not allow_local:
        raise IngestError("not_allowed", "local paths are not allowed in this run (allow_local=False)")
    if local_dirs:
        real = path.resolve()
        for d in local_dirs:
            base = Path(d).expanduser().resolve()
            if real == base or base in real.parents:
                return
        raise IngestError("not_allowed", f"{str(path)!r} is outside the allowed directories "
                                         f"({', '.join(str(d) for d in local_dirs)})")


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
            out.update(status="error", error=_short(f"{type(e).__name__}: {e}"), error_kind="download_failed")
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
        path = _local_path(url)
        _check_allowed(path, allow_local, local_dirs)
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
            todo.append({k: _clean(v) for k, v in row.items()})
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
