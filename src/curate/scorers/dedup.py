"""Near-duplicates across the whole root, by embedding cosine (columns ``dup_sim``, ``dup_of``).

Clips are ordered best first (by a score column, ``by=``; ties by clip id). For each clip,
``dup_sim`` is its highest cosine similarity to any *better* clip anywhere in the root (not only in
its own video) and ``dup_of`` that clip's id; the best clip of every group has ``dup_sim = -1``.
``curate filter --max-dup-sim 0.98`` then keeps a clip only when no better clip is that similar:
SemDeDup's rule, which keeps the best-scored clip of each group and needs no recomputation when the
threshold changes.

Two methods (``method=``): ``exact`` compares every pair (N², block by block over a float16 scratch file:
about a minute per 100k clips of 512-d on 2 CPU cores); ``clustered`` (:mod:`curate.scorers.semdedup`)
compares pairs only within k-means clusters, near-linear, with groups of clusters that can run on several
workers (``curate dedup --plan / --shard I/N / --merge``) and incremental runs when clips are added.
``auto`` (the default) is exact below :data:`AUTO_EXACT_BELOW` (20k) clips, clustered above (docs/dedup.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.embeddings import EmbeddingSet, sets
from curate.errors import CurateError
from curate.scorers import Scorer
from curate.scorers import semdedup as sd
from curate.store import Root

METHODS = ("auto", "exact", "clustered")
#: ``method=auto`` is exact below this many clips (measured in docs/dedup.md: the two cross near 10k clips
#: on 2 cores; exact is kept up to 2x slower because it misses no pair)
AUTO_EXACT_BELOW = 20_000
#: an incremental run is taken when at most this fraction of the clips is new (beyond, a new plan is cheaper)
INCREMENTAL_MAX = 0.5


def _opt_float(v) -> float | None:
    if v is None or str(v).strip().lower() in ("", "none", "off", "false"):
        return None
    return float(v)


def _opt_int(v) -> int | None:
    if v is None or str(v).strip().lower() in ("", "none", "auto", "0"):
        return None
    return int(v)


class DedupScorer(Scorer):
    name = "dedup"
    scope = "root"  # compares every clip of the root with every other

    def __init__(self, encoder: str | None = None, by: str | None = None, block: int | str = sd.BLOCK,
                 method: str = "auto", k: int | str | None = None, boundary: float | str | None = sd.DEFAULT_BOUNDARY,
                 device: str = "auto", incremental: bool | str = True) -> None:
        self.encoder, self.by, self.block = encoder, by, int(block)
        if method not in METHODS:
            raise CurateError(f"dedup: method must be one of {', '.join(METHODS)}, not {method!r}")
        self.method, self.k, self.boundary = method, _opt_int(k), _opt_float(boundary)
        self.device = device
        self.incremental = str(incremental).lower() not in ("false", "0", "no", "off")

    def columns(self, root: Root) -> list[str]:
        return ["dup_sim", "dup_of"]

    def set_name(self, root: Root) -> str:
        """The embedding set compared: ``encoder=``, or the root's only one."""
        names = sets(root)
        if self.encoder:
            if self.encoder not in names:
                raise CurateError(f"dedup: no embeddings named {self.encoder!r} (have: {', '.join(names) or 'none'})")
            return self.encoder
        if len(names) != 1:
            raise CurateError(f"dedup: pass encoder=NAME (embedding sets: {', '.join(names) or 'none'})")
        return names[0]

    def embedding_set(self, root: Root):
        return EmbeddingSet(root, self.set_name(root))

    def method_for(self, n: int) -> str:
        if self.method != "auto":
            return self.method
        return "exact" if n < AUTO_EXACT_BELOW else "clustered"

    # -- the scorer
    def compute(self, root: Root, clip_ids: pa.Array) -> pa.Table:
        es = self.embedding_set(root)
        order = self.order(root, es, es.clip_ids(clip_ids))
        kernel = sd.Kernel(self.device)
        if self.method_for(len(order)) == "exact":
            sim, arg = self.exact(es, order, kernel)
        else:
            sim, arg = self.clustered(root, es, order, kernel)
        return result_table(order, sim, arg, clip_ids)

    def exact(self, es, order: pa.Array, kernel: sd.Kernel) -> tuple[np.ndarray, np.ndarray]:
        """Every clip against every better-ranked one, block by block over a float16 scratch file."""
        n = len(order)
        sim = np.full(n, -1.0)
        arg = np.full(n, -1, np.int64)
        if not n:
            return sim, arg
        B = self.block
        best = np.full(n, -np.inf, np.float32)
        with sd.Scratch(n, es.dim) as sc:
            for r, v in table_stream(es, order)():
                sc.scatter(r, v)
            for i0 in range(0, n, B):
                q = sc.read(i0, min(n, i0 + B)).astype(np.float32)
                qr = np.arange(i0, i0 + len(q))
                for j0 in range(0, i0 + len(q), B):
                    k = sc.read(j0, min(n, j0 + B)).astype(np.float32)
                    lim = np.clip(qr - j0, 0, len(k))  # only clips ranked before each row
                    v, i = kernel.matmul_max(q, k, None if (lim >= len(k)).all() else lim)
                    v, i = v[:, 0], i[:, 0]
                    better = v > best[i0:i0 + len(q)]
                    best[i0:i0 + len(q)][better] = v[better]
                    arg[i0:i0 + len(q)][better] = j0 + i[better]
            found = np.nonzero(arg >= 0)[0]
            for a in range(0, len(found), 65536):  # the stored value: float64 of the pair (semdedup.pair_cosine)
                f = found[a:a + 65536]
                sim[f] = sd.pair_cosine(sc.take(f), sc.take(arg[f]))
        return sim, arg

    def clustered(self, root: Root, es, order: pa.Array, kernel: sd.Kernel) -> tuple[np.ndarray, np.ndarray]:
        """The stored plan's group results when complete for this order, an incremental run when clips were
        added to a planned set, else a new plan and all its groups in this process."""
        plan = sd.load_plan(root, es.name)
        if plan is not None and self.compatible(plan, es) and plan.order.equals(order):
            for of in sd.stored_part_counts(root, plan):
                parts = [root.read_parquet(sd.part_rel(plan, g, of)) for g in range(of)]
                got = sd.merge_parts(parts, len(order))
                sd.mark_complete(root, plan)
                return got
        if plan is not None and self.incremental and self.compatible(plan, es):
            got = self.incremental_run(root, es, plan, order, kernel)
            if got is not None:
                return got
        sd.clear_parts(root, es.name)  # a new plan: the groups of older ones are of no use
        plan = self.plan(root, es, order, kernel, keep_vectors=True)
        try:
            part = sd.run_group(plan, 0, 1, plan.vectors, kernel, dim=es.dim, block=self.block)
        finally:
            plan.close()
        sd.mark_complete(root, plan)
        return sd.merge_parts([part], len(order))

    def plan(self, root: Root, es, order: pa.Array, kernel: sd.Kernel, *, keep_vectors: bool = False,
             centroids: np.ndarray | None = None) -> sd.Plan:
        """Train (or reuse ``centroids``), assign and store the plan of this set."""
        return sd.make_plan(root, es.name, order, table_stream(es, order), es.dim, k=self.k, boundary=self.boundary,
                            kernel=kernel, keep_vectors=keep_vectors, centroids=centroids,
                            table_version=es.table.version(), by=self.by_column(root, es))

    def compatible(self, plan: sd.Plan, es) -> bool:
        m = plan.meta
        return (m.get("dim") == es.dim and m.get("boundary") == self.boundary
                and (self.k is None or m.get("k") == min(self.k, max(m.get("clips", 0), 1)))
                and m.get("by") == self.by_column(es.root, es))

    def can_increment(self, root: Root, old: sd.Plan, order: pa.Array) -> bool:
        """Whether ``order`` is ``old``'s clips (same relative order, each with a stored result) plus at most
        :data:`INCREMENTAL_MAX` of new ones."""
        n = len(order)
        if not old.meta.get("complete") or not len(old.order) or n - len(old.order) > INCREMENTAL_MAX * n:
            return False
        r = sd.ranks_of(order, old.order)
        if (r < 0).any() or (np.diff(r) <= 0).any():
            return False
        return stored_results(root, old.order, order) is not None

    def incremental_run(self, root: Root, es, old: sd.Plan, order: pa.Array, kernel: sd.Kernel):
        """New clips against the stored centroids and their clusters' members; None when it does not apply (old
        clips gone or reordered, too many new clips, old clips without a stored result)."""
        n = len(order)
        if not self.can_increment(root, old, order):
            return None
        old_ranks = sd.ranks_of(order, old.order)
        stored = stored_results(root, old.order, order)
        is_new = np.ones(n, bool)
        is_new[old_ranks] = False
        c1 = np.zeros(n, np.int32)
        c2 = np.full(n, -1, np.int32)
        c1[old_ranks], c2[old_ranks] = old.c1, old.c2
        new_ids = order.filter(pa.array(is_new))
        for r, v in table_stream(es, order, new_ids)():
            c1[r], c2[r] = sd.assign(kernel, v, old.centroids, self.boundary)
        version = es.table.version()
        meta = {**old.meta, "clips": n, "table_version": version, "copies": int((c2 >= 0).sum()),
                "incremental_from": old.plan_id, "complete": False}
        meta["plan_id"] = sd.fingerprint(n=n, boundary=self.boundary, version=version, by=meta.get("by"),
                                         base=old.plan_id, new=int(is_new.sum()))
        plan = sd.Plan(es.name, order, c1, c2, old.centroids, meta)
        # only the members of clusters a new clip joined are read
        touched = np.zeros(len(plan.centroids), bool)
        touched[c1[is_new]] = True
        t2 = c2[is_new]
        touched[t2[t2 >= 0]] = True
        _, rk, _ = sd.members(plan, touched)
        ids = order.take(pa.array(np.unique(rk)))
        part = sd.run_group(plan, 0, 1, table_stream(es, order, ids), kernel, dim=es.dim, new=is_new,
                            block=self.block)
        sd.save_plan(root, plan)
        sd.mark_complete(root, plan)
        return sd.merge_parts([part, stored], n)

    # -- ranking
    def by_column(self, root: Root, es) -> str | None:
        """The column that ranks clips: ``by=``, else the set's ``<name>_sim`` when scored, else none (clip id)."""
        if self.by:
            return self.by
        cols = root.scores.dataset().schema.names if root.scores.exists() else []
        return es.score_column if es.score_column in cols else None

    def order(self, root: Root, es, ids: pa.Array) -> pa.Array:
        """Clip ids best first: by the ``by`` column (default ``<encoder>_sim`` when scored), then clip id."""
        by = self.by_column(root, es)
        ids = ids.cast(pa.string())
        if by is None:
            return pc.take(ids, pc.sort_indices(ids))
        if not root.scores.exists() or by not in root.scores.dataset().schema.names:
            raise CurateError(f"dedup: score column {by!r} does not exist yet: run `curate score` for it first")
        t = root.scores.read_arrow(columns=["clip_id", by])
        pos = sd.ranks_of(t["clip_id"].combine_chunks(), ids)
        vals = pc.cast(t[by].combine_chunks(), pa.float64()).to_numpy(zero_copy_only=False)
        score = np.full(len(ids), -np.inf)
        has = pos >= 0
        score[has] = np.nan_to_num(vals[pos[has]], nan=-np.inf)
        key = pa.table({"s": score, "id": ids})
        return pc.take(ids, pc.sort_indices(key, sort_keys=[("s", "descending"), ("id", "ascending")]))


def table_stream(es, order: pa.Array, ids: pa.Array | None = None) -> sd.VectorSource:
    """A source of (rank, unit float16 vector) batches streamed from the embedding table (of ``ids`` only when
    given). Ranks come from one lookup of the table's ok ids (the vectors arrive in the same table order;
    a batch that does not is looked up on its own)."""
    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        tids = es.clip_ids(ids)
        ranks = sd.ranks_of(order, tids)
        pos = 0
        for b in es.vectors(ids, batch_rows=16384):
            m = len(b.clip_ids)
            if pos + m <= len(tids) and tids.slice(pos, m).equals(b.clip_ids):
                r = ranks[pos:pos + m]
            else:
                r = sd.ranks_of(order, b.clip_ids)
            pos += m
            keep = r >= 0
            if keep.any():
                yield r[keep], sd.unit16(b.video[keep])
    return gen


def stored_results(root: Root, old: pa.Array, order: pa.Array) -> pa.Table | None:
    """The stored ``dup_sim`` / ``dup_of`` of the clips ``old`` as (rank, sim, arg) rows in ``order``'s ranks
    (None when one of them has no stored value)."""
    if not root.scores.exists() or "dup_sim" not in root.scores.dataset().schema.names:
        return None
    t = root.scores.read_arrow(columns=["clip_id", "dup_sim", "dup_of"],
                               filter=pc.field("clip_id").isin(old))
    if t.num_rows != len(old) or t["dup_sim"].null_count:
        return None
    rank = sd.ranks_of(order, t["clip_id"].combine_chunks())
    arg = sd.ranks_of(order, t["dup_of"].combine_chunks())
    sim = t["dup_sim"].to_numpy().astype(np.float64)
    sim = np.where(arg >= 0, sim, -np.inf)
    return pa.table({"rank": rank, "sim": sim, "arg": arg})


def result_table(order: pa.Array, sim: np.ndarray, arg: np.ndarray, clip_ids: pa.Array) -> pa.Table:
    """``clip_id``, ``dup_sim``, ``dup_of`` for ``clip_ids`` (null for a clip without a vector)."""
    clip_ids = clip_ids.combine_chunks() if isinstance(clip_ids, pa.ChunkedArray) else clip_ids
    pos = sd.ranks_of(order, clip_ids.cast(pa.string()))
    has = pos >= 0
    p = np.where(has, pos, 0)
    s = np.where(arg[p] >= 0, sim[p], -1.0) if len(order) else np.full(len(pos), -1.0)
    a = arg[p] if len(order) else np.full(len(pos), -1)
    dup_of = order.take(pa.array(np.where(a >= 0, a, 0), mask=~(has & (a >= 0)))) if len(order) else \
        pa.nulls(len(pos), pa.string())
    return pa.table({"clip_id": clip_ids,
                     "dup_sim": pa.array(s, pa.float64(), mask=~has),
                     "dup_of": dup_of.cast(pa.string())})
