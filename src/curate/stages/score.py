"""Score: compute score columns for every ok clip and merge them into ``ROOT/scores``.

Scores of different scorers live side by side in one table keyed by ``clip_id``; running a scorer
again replaces its own columns and leaves the others as they are. Each scorer's output is merged
into the table with one Lance ``merge_insert`` (:func:`merge_into_scores`). Nothing here loads a model for
alignment: it reads stored embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from curate.embeddings import embedding_sets_for_caption
from curate.errors import CurateError
from curate.faults import crashpoint
from curate.plugins import get_scorer
from curate.progress import NullProgress, Progress, StageResult
from curate.store import Root, has_duplicates, safe_name
from curate.store.names import caption_source_label, parse_caption_source

DEFAULT_SCORERS = ("technical", "alignment")
SCOPES = ("clip", "root")


def scope_of(scorer) -> str:
    """``"clip"``: the scorer scores each clip from its own pixels, so it runs per batch of sources (mapped
    Airflow tasks, ``curate score --shard i/n``); ``"root"``: it needs the whole root (dedup, alignment over
    every embedding set, cheap table joins) and runs once. Declared by ``Scorer.scope``; a scorer that
    does not declare it is per clip when it is incremental."""
    scope = getattr(scorer, "scope", None) or ("clip" if getattr(scorer, "incremental", False) else "root")
    if scope not in SCOPES:
        raise ValueError(f"scorer {getattr(scorer, 'name', scorer)!r}: scope must be 'clip' or 'root', not {scope!r}")
    return scope


def staged(root: Root, scorer: str):
    """``ROOT/score_parts/<scorer>``: rows of a per-clip scorer appended by batches, merged into ``scores`` by the
    next whole-root score run (the batches never rewrite the shared scores table)."""
    return root.table(f"score_parts/{safe_name(scorer)}", "clip_id")


def score(root: Root | str, *, scorers: Iterable[str] = DEFAULT_SCORERS, encoder: str | None = None,
          options: dict[str, dict[str, Any]] | None = None, caption: str | None = None,
          source_ids: Iterable[str] | None = None, scope: str | None = None,
          progress: Progress | None = None, scorer_objs: list | None = None) -> StageResult:
    """Run ``scorers`` (``alignment`` limited to ``encoder`` when given) and merge their columns.

    ``caption`` (``source`` or ``captions:NAME``) limits ``alignment`` to the embedding sets whose text
    embeddings are that caption source (``curate embed --caption``); each set's ``<name>_sim`` always
    scores the captions its ``text_emb`` embeds.

    Each scorer's columns are merged into the scores table with one ``merge_insert`` (see
    :func:`merge_into_scores`).

    ``source_ids`` makes it per-batch work: only the clip-scope scorers (:func:`scope_of`), only those
    sources' clips, appended to ``ROOT/score_parts/<scorer>`` without any lock; root-scope scorers are
    left for the whole-root run (listed in ``extra["root_scope"]``). A whole-root run first merges what
    batches staged, then runs the scorers (``scope="root"``: only the root-scope ones, e.g. on a machine
    without the models of the per-clip scorers). ``scorer_objs``: ``[(name, scorer)]`` made before by
    :func:`make_scorers` (a resident worker keeps their models loaded across batches)."""
    root = Root(root) if not isinstance(root, Root) else root
    progress = progress or NullProgress()
    if scope is not None and scope not in SCOPES:
        raise CurateError(f"scope must be 'clip' or 'root', not {scope!r}")
    names: list = list(scorers)
    if caption is not None and "alignment" in names:  # one alignment run per set of that caption source
        i = names.index("alignment")
        names[i:i + 1] = [("alignment", n) for n in alignment_sets(root, encoder, caption)]
    made = scorer_objs if scorer_objs is not None else make_scorers(names, encoder, options)
    if source_ids is not None:
        return _score_batch(root.ensure(), made, set(source_ids), progress)
    result = StageResult("score")
    with root.ensure().lock("score"):
        result.extra["merged_from_batches"] = merge_staged(root)
        clips = root.clips.read_arrow(columns=["clip_id", "status"])
        ids = clips.filter(pc.equal(clips["status"], "ok"))["clip_id"].combine_chunks()
        del clips
        result.total = len(ids)
        todo_scorers = [(n, s) for n, s in made if scope is None or scope_of(s) == scope]
        progress.start(len(todo_scorers), "score")
        for _, scorer in todo_scorers:
            todo = ids
            if scorer.incremental and root.scores.exists():
                todo = pending_ids(root, ids, scorer.columns(root))
            new = scorer.compute(root, todo)
            merge_into_scores(root, new)  # after each scorer: later scorers (dedup by=...) read it, a crash keeps it
            del new
            progress.advance()
        _count_errors(root, ids, result)
    return result.done()


def alignment_sets(root: Root, encoder: str | None, caption: str) -> list[str]:
    """The embedding sets ``score --caption`` aligns: those whose text embeddings are ``caption``."""
    label = caption_source_label(parse_caption_source(caption))
    sets = embedding_sets_for_caption(root, caption)
    if encoder:
        if encoder not in sets:
            raise CurateError(f"embeddings/{encoder} does not embed the captions {label!r}: drop --encoder, or embed "
                              f"them with `curate embed --caption {label}`.")
        sets = [encoder]
    if not sets:
        raise CurateError(f"No embedding set has text embeddings of {label!r}: run `curate embed --root {root} "
                          f"--encoder NAME --caption {label}` first.")
    return sets


def make_scorers(names: list, encoder: str | None, options: dict[str, dict[str, Any]] | None) -> list:
    """``[(name, scorer)]`` created from their plugins (cheap: scorers load their models on first use)."""
    out = []
    for sname in names:
        sname, only = sname if isinstance(sname, tuple) else (sname, None)  # ("alignment", one embedding set)
        opts = dict((options or {}).get(sname, {}))
        if only:
            opts["encoder"] = only
        if sname in ("alignment", "dedup") and encoder:
            opts.setdefault("encoder", encoder)
        out.append((sname, get_scorer(sname).create(**opts)))  # cheap: scorers load models on first use
    return out


def _score_batch(root: Root, made: list, source_ids: set[str], progress: Progress) -> StageResult:
    """Per-batch scoring: the clip-scope scorers over the batch's clips, appended to ``score_parts``."""
    result = StageResult("score", extra={"root_scope": [n for n, s in made if scope_of(s) != "clip"]})
    mine = ds.field("source_id").isin(pa.array(sorted(source_ids), pa.string()))
    clips = root.clips.read_arrow(columns=["clip_id", "status"], filter=mine)
    ids = clips.filter(pc.equal(clips["status"], "ok"))["clip_id"].combine_chunks()
    result.total = len(ids)
    todo_scorers = [(n, s) for n, s in made if scope_of(s) == "clip"]
    progress.start(len(todo_scorers), "score (batch)")
    bad: set[str] = set()
    for sname, scorer in todo_scorers:
        todo = pending_ids(root, ids, scorer.columns(root)) if root.scores.exists() else ids
        part = staged(root, sname)
        if len(todo) and part.exists():  # a retried batch: rows it staged before are kept, not redone
            have = part.read_arrow(columns=["clip_id"], filter=ds.field("clip_id").isin(todo))["clip_id"]
            todo = todo.filter(pc.invert(pc.is_in(todo, value_set=have.combine_chunks())))
        if len(todo):
            new = scorer.compute(root, todo)
            crashpoint("score-batch")
            part.append(new)
            for c in (c for c in new.column_names if c.endswith("_error")):
                hit = pc.is_valid(new[c])
                bad.update(new["clip_id"].filter(hit).to_pylist())
                for row in new.filter(hit).slice(0, max(0, 5 - len(result.errors))).to_pylist():
                    result.errors.append(f"{row['clip_id']}: {c}: {row[c]}")
        progress.advance()
    result.error = len(bad)
    result.ok = result.total - result.error
    return result.done()


def merge_staged(root: Root) -> int:
    """Merge rows that batches staged under ``ROOT/score_parts/<scorer>`` into ``scores``: only rows of clips
    still without a value (nor an error) in that scorer's first column, so a whole-root rescore is never
    undone and a second merge writes nothing. Returns the rows merged."""
    merged = 0
    for name in sorted(root.ls("score_parts", dirs=True)):
        part = staged(root, name)
        if not part.exists():
            continue
        rows = part.read_arrow()
        cols = [c for c in rows.column_names if c != "clip_id" and not c.endswith("_error")]
        if not cols or rows.num_rows == 0:
            continue
        ids = rows["clip_id"].combine_chunks()
        todo = pending_ids(root, ids, cols) if root.scores.exists() else ids
        rows = rows.filter(pc.is_in(rows["clip_id"], value_set=todo))
        if rows.num_rows:
            merge_into_scores(root, rows)
            merged += rows.num_rows
    return merged


#: rows of the scores table read per step when counting errors and pending clips
MERGE_BATCH_ROWS = 262144


def merge_into_scores(root: Root, new: pa.Table) -> bool:
    """Merge ``new`` (clip_id + columns) into ``ROOT/scores``: its columns replace same-named ones for its
    rows, other rows and columns stay. One Lance ``merge_insert`` (new columns are added first, as
    metadata); nothing is written when nothing changes (a rerun that computes the same values leaves
    the table's version as it is). Returns whether it wrote."""
    if new.num_rows == 0:
        return False
    new = new.sort_by("clip_id")
    if has_duplicates(new["clip_id"]):
        raise ValueError("a scorer returned a clip id twice")
    table = root.scores
    d = table.lance()
    if d is not None and _unchanged(d, new):
        return False
    table.upsert(new)
    crashpoint("score-merge")
    return True


def _unchanged(d, new: pa.Table) -> bool:
    """Whether the dataset already holds exactly ``new``'s values for ``new``'s rows."""
    cols = new.column_names
    if any(c not in d.schema.names for c in cols):
        return False
    keys = set(new["clip_id"].to_pylist())
    got = []
    for batch in d.to_batches(columns=cols, batch_size=MERGE_BATCH_ROWS):
        hit = pc.is_in(batch.column(0 if cols[0] == "clip_id" else cols.index("clip_id")),
                       value_set=new["clip_id"].combine_chunks())
        if pc.any(hit).as_py():
            got.append(pa.Table.from_batches([batch]).filter(hit))
    old = pa.concat_tables(got) if got else None
    if old is None or old.num_rows != len(keys):
        return False
    old = old.sort_by("clip_id").select(cols)
    for c in cols:
        a, b = old[c], new[c]
        if not a.type.equals(b.type):
            try:
                b = b.cast(a.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return False
        if not a.combine_chunks().equals(b.combine_chunks()):
            return False
    return True


def _count_errors(root: Root, ids: pa.Array, result: StageResult) -> None:
    """Clips of this run with an error in any ``*_error`` column (streamed over the scores table)."""
    d = root.scores.dataset()
    if d is None:
        result.ok = result.total
        result.extra["columns"] = []
        return
    names = d.schema.names
    err_cols = [c for c in names if c.endswith("_error")]
    result.extra["columns"] = [c for c in names if c != "clip_id"]
    if err_cols:
        for batch in root.scores.iter_batches(batch_size=MERGE_BATCH_ROWS, columns=["clip_id", *err_cols]):
            bad = pc.is_valid(batch.column(err_cols[0]))
            for c in err_cols[1:]:
                bad = pc.or_(bad, pc.is_valid(batch.column(c)))
            hit = pc.and_(bad, pc.is_in(batch.column("clip_id"), value_set=ids))
            n = int(pc.sum(hit).as_py() or 0)
            if not n:
                continue
            result.error += n
            for row in pa.Table.from_batches([batch]).filter(hit).slice(0, max(0, 5 - len(result.errors))).to_pylist():
                msg = "; ".join(f"{c}: {row[c]}" for c in err_cols if row[c])
                result.errors.append(f"{row['clip_id']}: {msg}")
    result.ok = result.total - result.error


def pending_ids(root: Root, ids: pa.Array, columns: list[str]) -> pa.Array:
    """Clip ids in ``ids`` without a value (nor an error) in the scorer's first column (streamed)."""
    col = columns[0]
    d = root.scores.dataset()
    names = d.schema.names if d is not None else []
    if col not in names:
        return ids
    err = f"{col}_error"
    read = ["clip_id", col] + ([err] if err in names else [])
    done = []
    for batch in root.scores.iter_batches(batch_size=MERGE_BATCH_ROWS, columns=read):
        ok = pc.is_valid(batch.column(col))
        if err in names:
            ok = pc.or_(ok, pc.is_valid(batch.column(err)))
        done.append(pc.filter(batch.column("clip_id"), ok))
    if not done:
        return ids
    return ids.filter(pc.invert(pc.is_in(ids, value_set=pa.chunked_array(done, pa.string()))))


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
