"""Source lists and what a source carries: reading CSV/TSV/JSONL/JSON/Parquet/TXT lists into source rows, and
the licence and provenance of each source (from the list's own columns or yt-dlp's info JSON).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.store import SCHEMAS, Root, rows_to_table, stable_id

LIST_SUFFIXES = {".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".txt"}


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


def clean_value(v: Any) -> Any:
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
    v = clean_value(v)
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
        url = clean_value(rec.get("url"))
        url = "" if url is None else str(url)
        start, end = _seg(rec.get("start_s")), _seg(rec.get("end_s"))
        sid = stable_id(url, "" if start is None else f"{start:.3f}", "" if end is None else f"{end:.3f}")
        if sid in seen:
            continue
        seen.add(sid)
        caption = clean_value(rec.get("caption"))
        meta = {k: clean_value(v) for k, v in rec.items() if k not in core}
        rows.append({
            "source_id": sid, "url": url, "caption": None if caption is None else str(caption),
            "title": None if clean_value(rec.get("title")) is None else str(rec.get("title")),
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
        v = clean_value((meta or {}).get(k))
        if v is None:
            v = clean_value((info or {}).get(k))
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
        if r.get("info_path") and any(clean_value(meta.get(k)) is None for k in PROVENANCE):
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


