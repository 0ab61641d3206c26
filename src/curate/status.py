"""Per-stage counts of ok / error / pending on a dataset root (what `curate status` prints)."""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc

from curate.store import Root
from curate.workers import stage_summaries


def _count(values, status: str) -> int:
    return int(pc.sum(pc.equal(values, status)).as_py() or 0)


def stage_counts(root: Root | str) -> dict[str, dict[str, Any]]:
    root = Root(root) if not isinstance(root, Root) else root
    out: dict[str, dict[str, Any]] = {}
    src = root.sources.read_arrow(columns=["source_id", "status"])
    out["ingest"] = {"ok": _count(src["status"], "ok"), "error": _count(src["status"], "error"),
                     "pending": _count(src["status"], "pending")}
    ok_sources = set(src.filter(pc.equal(src["status"], "ok"))["source_id"].to_pylist())
    clips = root.clips.read_arrow(columns=["clip_id", "source_id", "status"])
    split_done = set(clips["source_id"].to_pylist())
    err_sources = set(clips.filter(pc.equal(clips["status"], "error"))["source_id"].to_pylist())
    out["split"] = {"ok": len((split_done - err_sources) & ok_sources), "error": len(err_sources & ok_sources),
                    "pending": len(ok_sources - split_done), "clips": _count(clips["status"], "ok")}
    ok_clips = clips.filter(pc.equal(clips["status"], "ok"))["clip_id"]
    n_ok = len(ok_clips)
    for name in root.embedding_names():
        e = root.embeddings(name).read_arrow(columns=["clip_id", "status"])
        e = e.filter(pc.is_in(e["clip_id"], value_set=ok_clips))
        ok, err = _count(e["status"], "ok"), _count(e["status"], "error")
        out[f"embed:{name}"] = {"ok": ok, "error": err, "pending": n_ok - ok - err}
    for name in root.caption_names():
        c = root.captions(name).read_arrow(columns=["clip_id", "status"])
        c = c.filter(pc.is_in(c["clip_id"], value_set=ok_clips))
        ok, err = _count(c["status"], "ok"), _count(c["status"], "error")
        out[f"caption:{name}"] = {"ok": ok, "error": err, "pending": n_ok - ok - err}
    if root.scores.exists():
        s = root.scores.read_arrow()
        s = s.filter(pc.is_in(s["clip_id"], value_set=ok_clips))
        err_cols = [c for c in s.column_names if c.endswith("_error")]
        bad = 0
        if err_cols and s.num_rows:
            m = pc.is_valid(s[err_cols[0]])
            for c in err_cols[1:]:
                m = pc.or_(m, pc.is_valid(s[c]))
            bad = int(pc.sum(m).as_py() or 0)
        out["score"] = {"ok": s.num_rows - bad, "error": bad, "pending": n_ok - s.num_rows}
    else:
        out["score"] = {"ok": 0, "error": 0, "pending": n_ok}
    for name in root.subset_names():
        d = root.subset_rel(name)
        ann = f"{d}/annotations.parquet"
        if root.exists(ann):
            a = root.read_parquet(ann)
            a = a if "status" in a.column_names else None
            ok = _count(a["status"], "ok") if a is not None else 0
            err = _count(a["status"], "error") if a is not None else 0
            out[f"publish:{name}"] = {"ok": ok, "error": err, "pending": 0}
        elif root.exists(f"{d}/selection.parquet"):
            out[f"publish:{name}"] = {"ok": 0, "error": 0,
                                      "pending": root.read_parquet(f"{d}/selection.parquet", columns=["clip_id"]).num_rows}
    return out


def worker_status(root: Root | str) -> dict[str, dict[str, Any]]:
    """Per ``<board>/<stage>`` that resident workers ran (:mod:`curate.workers`): batches done / running /
    failed / waiting, workers, model loads, setup / forward / wall seconds and the GPU-busy fraction."""
    return stage_summaries(root)


def status_dict(root: Root | str) -> dict[str, Any]:
    """What `curate status --json` prints: :func:`stage_counts`, and ``workers`` (:func:`worker_status`) when
    resident workers ran on the root."""
    out: dict[str, Any] = stage_counts(root)
    workers = worker_status(root)
    if workers:
        out["workers"] = workers
    return out
