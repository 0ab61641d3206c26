"""Dedup on several workers: plan once, the groups of clusters side by side, one merge (``curate dedup``).

``curate score -s dedup`` runs the dedup scorer in one process (exact or clustered, :mod:`curate.scorers.dedup`).
For a root too big for one worker the clustered method splits:

- ``plan=True``: rank the clips, train the centroids, assign every clip, store the plan beside the embedding set
  (``embeddings/<name>/_dedup``); a plan that still matches the clips and options is kept, so a rerun does not
  retrain (and the groups already written stay valid);
- ``shard=(I, N)``: group I of N of the plan's clusters, written to ``_dedup/parts/<plan>/nN-I.parquet`` (its own
  file, no lock; a group already written is skipped, so a killed task redoes only its group);
- ``merge=True``: the dedup scorer through the score stage, which finds the complete parts of the plan and merges
  them into ``dup_sim`` / ``dup_of`` (nothing is compared again).

With no step it is ``curate score -s dedup``. Below ``AUTO_EXACT_BELOW`` clips ``method=auto`` is exact: the plan
step then plans nothing and the merge computes it.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.progress import NullProgress, Progress, StageResult
from curate.scorers import semdedup as sd
from curate.scorers.dedup import DedupScorer, table_stream
from curate.stages.score import score
from curate.store import Root


def scorer_from(encoder: str | None, options: dict[str, Any] | None) -> DedupScorer:
    """The dedup scorer of these options (``curate score -o dedup.KEY=VALUE`` spells the same ones)."""
    opts = dict(options or {})
    if encoder:
        opts.setdefault("encoder", encoder)
    return DedupScorer(**opts)


def ok_clip_ids(root: Root) -> pa.Array | None:
    """The clips the score stage scores (ok rows of ``clips``), None when the root has no clips table."""
    if not root.clips.exists():
        return None
    clips = root.clips.read_arrow(columns=["clip_id", "status"])
    return clips.filter(pc.equal(clips["status"], "ok"))["clip_id"].combine_chunks()


def dedup(root: Root | str, *, encoder: str | None = None, options: dict[str, Any] | None = None, groups: int = 1,
          plan: bool = False, shard: tuple[int, int] | None = None, merge: bool = False,
          progress: Progress | None = None) -> StageResult:
    """One step of dedup (``plan``, ``shard=(I, N)``, ``merge``), or all of it in this process."""
    root = Root(root) if not isinstance(root, Root) else root
    progress = progress or NullProgress()
    scorer = scorer_from(encoder, options)
    result = StageResult("dedup")
    if sum(bool(x) for x in (plan, shard, merge)) > 1:
        raise CurateError("dedup: give one of plan, shard and merge")
    if plan:
        return plan_groups(root, scorer, groups, result).done()
    if shard is not None:
        return run_shard(root, scorer, shard, result).done()
    es = scorer.embedding_set(root)
    if merge:
        p = sd.load_plan(root, es.name)
        started = p is not None and root.exists(
            sd.state_rel(es.name, "parts", p.plan_id))
        if started and not sd.stored_part_counts(root, p):  # a sharded run of this plan, not finished
            n = max(1, int(p.meta.get("groups") or groups))
            raise CurateError(f"dedup: groups {', '.join(map(str, sd.missing_parts(root, p, n)))} of {n} are not "
                              f"written yet (`curate dedup --shard I/{n}`)")
    res = score(root, scorers=["dedup"], encoder=es.name, options={"dedup": dict(options or {})}, progress=progress)
    result.total, result.ok, result.error = res.total, res.ok, res.error
    result.errors = res.errors
    return result.done()


def plan_groups(root: Root, scorer: DedupScorer, groups: int, result: StageResult) -> StageResult:
    """Make (or keep) the plan; ``extra["groups"]``: the ``{"index", "of"}`` of each group still to run
    (none when the method is exact for this root)."""
    es = scorer.embedding_set(root)
    order = scorer.order(root, es, es.clip_ids(ok_clip_ids(root)))
    result.total = len(order)
    groups = max(1, int(groups))
    if scorer.method_for(len(order)) == "exact":
        result.extra.update(method="exact", groups=[])
        return result
    kernel = sd.Kernel(scorer.device)
    p = sd.load_plan(root, es.name)
    if p is not None and scorer.compatible(p, es) and not p.order.equals(order) and scorer.can_increment(root, p, order):
        # clips were added to a planned root: the merge step compares them in one process (their clusters only)
        result.extra.update(method="incremental", plan=p.plan_id, groups=[])
        return result
    if p is not None and scorer.compatible(p, es) and p.order.equals(order) and p.meta.get("complete"):
        # the scores already hold this plan's result: the merge step returns it, nothing to compare
        result.extra.update(method="clustered", plan=p.plan_id, groups=[])
        return result
    if p is None or not scorer.compatible(p, es) or not p.order.equals(order):
        with root.ensure().lock("dedup"):
            sd.clear_parts(root, es.name)
            p = scorer.plan(root, es, order, kernel)
    if p.meta.get("groups") != groups:
        p.meta["groups"] = groups
        root.write_bytes(sd.state_rel(es.name, "plan.json"), json.dumps(p.meta, indent=1))
    result.ok = len(order)
    result.extra.update(method="clustered", plan=p.plan_id, k=p.meta["k"], copies=p.meta["copies"],
                        groups=[{"index": g, "of": groups} for g in sd.missing_parts(root, p, groups)])
    return result


def run_shard(root: Root, scorer: DedupScorer, shard: tuple[int, int], result: StageResult) -> StageResult:
    """Group ``I`` of ``N`` of the stored plan (skipped when its part is written)."""
    i, n = shard
    es = scorer.embedding_set(root)
    p = sd.load_plan(root, es.name)
    if p is None:
        raise CurateError(f"dedup: no plan for embeddings/{es.name}: run `curate dedup --root {root} --plan` first")
    rel = sd.part_rel(p, i, n)
    result.extra.update(plan=p.plan_id, group=i, of=n)
    if root.exists(rel):
        result.skipped = 1
        return result
    part = sd.run_group(p, i, n, table_stream(es, p.order), sd.Kernel(scorer.device), dim=es.dim,
                        block=scorer.block)
    root.write_parquet(part, rel)
    result.total = result.ok = part.num_rows
    return result
