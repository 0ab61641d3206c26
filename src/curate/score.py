"""Score: compute score columns for every ok clip and merge them into ``ROOT/scores``.

Scores of different scorers live side by side in one table keyed by ``clip_id``; running a scorer
again replaces its own columns and leaves the others as they are. Nothing here loads a model for
alignment: it reads stored embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.progress import NullProgress, Progress, StageResult
from curate.store import Root

DEFAULT_SCORERS = ("technical", "alignment")


def score(root: Root | str, *, scorers: Iterable[str] = DEFAULT_SCORERS, encoder: str | None = None,
          options: dict[str, dict[str, Any]] | None = None, progress: Progress | None = None) -> StageResult:
    """Run ``scorers`` (``alignment`` limited to ``encoder`` when given) and merge their columns."""
    from curate.plugins import get_scorer

    root = Root(root) if not isinstance(root, Root) else root
    progress = progress or NullProgress()
    result = StageResult("score")
    with root.ensure().lock("score"):
        root.scores.repair()
        clips = root.clips.read_arrow(columns=["clip_id", "status"])
        ids = clips.filter(pc.equal(clips["status"], "ok"))["clip_id"].combine_chunks()
        result.total = len(ids)
        names = list(scorers)
        progress.start(len(names), "score")
        merged = root.scores.read_arrow() if root.scores.exists() else pa.table({"clip_id": pa.array([], pa.string())})
        saved = merged.sort_by("clip_id")
        for sname in names:
            opts = dict((options or {}).get(sname, {}))
            if sname in ("alignment", "dedup") and encoder:
                opts.setdefault("encoder", encoder)
            scorer = get_scorer(sname).create(**opts)
            todo = ids
            if scorer.incremental and merged.num_rows:
                todo = pending_ids(merged, ids, scorer.columns(root))
            new = scorer.compute(root, todo)
            merged = merge_columns(merged, new)
            saved = _save(root, merged, saved)  # after each scorer: later scorers (dedup by=...) read it, a crash keeps it
            progress.advance()
        err_cols = [c for c in merged.column_names if c.endswith("_error")]
        if err_cols and merged.num_rows:
            bad = pc.is_valid(merged[err_cols[0]])
            for c in err_cols[1:]:
                bad = pc.or_(bad, pc.is_valid(merged[c]))
            in_run = pc.is_in(merged["clip_id"], value_set=ids)
            result.error = int(pc.sum(pc.and_(bad, in_run)).as_py() or 0)
            sample = merged.filter(pc.and_(bad, in_run)).slice(0, 5).to_pylist()
            for row in sample:
                msg = "; ".join(f"{c}: {row[c]}" for c in err_cols if row[c])
                result.errors.append(f"{row['clip_id']}: {msg}")
        result.ok = result.total - result.error
        result.extra["columns"] = [c for c in merged.column_names if c != "clip_id"]
    return result.done()


def _save(root: Root, merged: pa.Table, saved: pa.Table) -> pa.Table:
    """Write ``merged`` unless it equals ``saved`` (the table on disk): a rerun that changes nothing writes nothing."""
    merged = merged.sort_by("clip_id")
    if not saved.equals(merged):
        root.scores.rewrite(merged)
    return merged


def pending_ids(merged: pa.Table, ids: pa.Array, columns: list[str]) -> pa.Array:
    """Clip ids in ``ids`` without a value (nor an error) in the scorer's first column."""
    col = columns[0]
    if col not in merged.column_names:
        return ids
    done = pc.is_valid(merged[col])
    err = f"{col}_error"
    if err in merged.column_names:
        done = pc.or_(done, pc.is_valid(merged[err]))
    done_ids = merged.filter(done)["clip_id"]
    return ids.filter(pc.invert(pc.is_in(ids, value_set=done_ids)))


def merge_columns(base: pa.Table, new: pa.Table) -> pa.Table:
    """Outer-join ``new`` into ``base`` on clip_id; ``new``'s columns replace same-named ones for its rows."""
    if base.num_rows == 0 and base.num_columns <= 1:
        return new
    cols = [c for c in new.column_names if c != "clip_id"]
    keep = base.drop_columns([c for c in cols if c in base.column_names])
    others = keep.filter(pc.invert(pc.is_in(keep["clip_id"], value_set=new["clip_id"])))
    joined = new.join(keep, "clip_id", join_type="left outer")
    if others.num_rows:
        joined = pa.concat_tables([joined, others], promote_options="permissive")
    # rows of `base` not in `new` keep their old values of `cols`
    if others.num_rows and any(c in base.column_names for c in cols):
        old = base.filter(pc.invert(pc.is_in(base["clip_id"], value_set=new["clip_id"])))
        head = joined.slice(0, new.num_rows)
        tail = joined.slice(new.num_rows)
        for c in cols:
            if c in old.column_names:
                i = tail.column_names.index(c)
                tail = tail.set_column(i, c, old[c].cast(tail.schema.field(c).type))
        joined = pa.concat_tables([head, tail])
    return joined
