"""Clustered near-duplicate search (SemDeDup): k-means, then SemDeDup's rule within each cluster.

The outputs are the exact method's (:mod:`curate.scorers.dedup`): clips ranked best first, ``dup_sim`` = the
highest cosine to a better-ranked clip, ``dup_of`` = that clip; only the pairs compared differ. Steps:

1. **plan** (:func:`make_plan`, once): rank the clips, stream their vectors (unit, float16) into a local
   scratch file in table order, train spherical k-means (faiss) on a sample, assign every clip to its nearest
   centroid and, when its cosine to the second-nearest is within ``boundary`` of the nearest, to that one too
   (so a near-duplicate pair split by a cluster border is still compared). The centroids and the assignment
   are stored beside the embedding set, under ``embeddings/<name>/_dedup/`` (``plan.json`` names the set, its
   table version, K, the boundary rule and the ranking).
2. **groups** (:func:`run_group`, independent): the clusters are dealt into N groups of about equal work;
   group I gathers its members' vectors (from the plan's scratch file, or by streaming the embedding table
   on another machine) into a cluster-sorted scratch file and compares each cluster's members with the
   better-ranked members of the same cluster, a block at a time. Its result (rank, best cosine, best rank) is
   written to ``_dedup/parts/<plan>/n<N>-<I>.parquet``; a part already written is not redone.
3. **merge** (:func:`merge_parts`): the maximum over a clip's clusters, back to ``dup_sim`` / ``dup_of``.

Incremental (:func:`incremental`): clips added after a plan are assigned to its centroids and compared only
with the members of their clusters (old x old pairs are not redone); old clips keep their stored result
unless a new, better-ranked clip is more similar. With the same centroids this equals a run from scratch.

The final ``dup_sim`` of every pair is recomputed in float64 from the float16 vectors
(:func:`pair_cosine`), by the exact method too, so both methods give identical values for the pairs they
both find. Memory is bounded: vectors live in local scratch files (``CURATE_SCRATCH``), written and read a batch or a
cluster at a time with pwrite/pread, so peak RSS does not grow with the vectors.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.store import Root
from curate.store.storage import scratch_dir

#: rows per block of the similarity kernels (a block x block float32 matrix: 64 MiB)
BLOCK = 4096
#: training points per centroid (faiss warns below 39)
SAMPLE_PER_CENTROID = 40
KMEANS_ITERATIONS = 10
SEED = 1234
#: default boundary rule: a clip also joins its second-nearest cluster when its cosine to that centroid is
#: within this much of its cosine to the nearest (see docs/dedup.md for what it costs and saves)
DEFAULT_BOUNDARY = 0.01
STATE_DIR = "_dedup"


def choose_k(n: int) -> int:
    """Clusters for ``n`` clips: about sqrt(n) (fewer below 1600 clips: k-means wants 40 points a cluster), which
    balances the two O(N*K) and O(N^2/K) halves of the work
    (assignment to centroids, comparisons within clusters)."""
    return max(1, min(n // SAMPLE_PER_CENTROID, int(round(math.sqrt(max(n, 1))))))  # small n: 40 points each


# ----------------------------------------------------------------------------- kernels (numpy or torch)
class Kernel:
    """Dense products on one device: ``numpy`` (BLAS on the CPU), or torch on ``cpu`` / ``cuda[:i]``
    (``auto``: cuda when torch sees one, else numpy). Results are the same on every device up to float32
    rounding; the final cosines are recomputed in float64 (:func:`pair_cosine`)."""

    def __init__(self, device: str = "auto") -> None:
        if device == "auto":
            device = "numpy"
            # torch only where a GPU may be: importing it costs ~0.5 GiB of RSS for nothing on a CPU worker
            if glob.glob("/dev/nvidia[0-9]*") and importlib.util.find_spec("torch") is not None:
                import torch

                if torch.cuda.is_available():
                    device = "cuda"
        self.device = device
        self.torch = None
        if device != "numpy":
            import torch

            self.torch = torch

    def matmul_max(self, a: np.ndarray, b: np.ndarray, limit: np.ndarray | None, top: int = 1):
        """Per row i of ``a`` [m, D]: the ``top`` largest of ``a @ b.T`` over the columns ``0 .. limit[i]-1``
        (None: all), as (values [m, top] float32, column [m, top] int64; -inf / -1 when none). Ties go to the
        lowest column."""
        if self.torch is None:
            s = a.astype(np.float32, copy=False) @ b.astype(np.float32, copy=False).T
            if limit is not None:
                np.putmask(s, np.arange(s.shape[1])[None, :] >= limit[:, None], -np.inf)
            rows = np.arange(len(s))
            cols, vals = [], []
            for _ in range(top):  # argmax passes: first (lowest) column among ties; far cheaper than a partition
                i = s.argmax(1)
                cols.append(i)
                vals.append(s[rows, i])
                s[rows, i] = -np.inf
            idx, vals = np.stack(cols, 1), np.stack(vals, 1)
        else:
            t = self.torch
            ta = t.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)
            tb = t.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).to(self.device)
            s = ta @ tb.T
            if limit is not None:
                cols = t.arange(s.shape[1], device=s.device)[None, :]
                s.masked_fill_(cols >= t.from_numpy(limit).to(s.device)[:, None], -float("inf"))
            if top == 1:
                v, i = s.max(1, keepdim=True)  # max: first index among ties, on CPU and CUDA alike
            else:
                v, i = t.sort(s, dim=1, descending=True, stable=True)
                v, i = v[:, :top], i[:, :top]
            vals, idx = v.cpu().numpy(), i.cpu().numpy().astype(np.int64)
        idx = np.where(np.isneginf(vals), -1, idx)
        return vals, idx


def pair_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of float16 unit vectors, in float64: the one value both methods store as ``dup_sim``."""
    return np.minimum(1.0, np.einsum("nd,nd->n", a.astype(np.float64), b.astype(np.float64)))


def unit16(vecs: np.ndarray) -> np.ndarray:
    """Unit float16 rows (query stacks ``[n, Q, D]``: their normalised mean)."""
    if vecs.ndim == 3:
        vecs = vecs.mean(1)
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return vecs.astype(np.float16)


#: query rows per step inside a cluster: small, so that only the keys ranked before the step are multiplied
#: (about half the square of a cluster instead of all of it)
QUERY_BLOCK = 512


def prev_best(kernel: Kernel, qv: np.ndarray, qr: np.ndarray, kv: np.ndarray, kr: np.ndarray,
              block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """For each query row: the highest cosine to a key row ranked before it (``kr < qr``) and that key's index
    (-inf / -1 when none). Queries and keys must be sorted by rank (keys past a step's last query are never
    multiplied)."""
    best = np.full(len(qv), -np.inf, np.float32)
    arg = np.full(len(qv), -1, np.int64)
    q32 = qv.astype(np.float32)
    k32 = q32 if kv is qv else kv.astype(np.float32)
    step = min(block, QUERY_BLOCK)
    for i0 in range(0, len(qv), step):
        q, r = q32[i0:i0 + step], qr[i0:i0 + step]
        end = int(np.searchsorted(kr, r.max(), side="left")) if len(r) else 0
        for j0 in range(0, end, block):
            k = k32[j0:min(end, j0 + block)]
            lim = np.searchsorted(kr[j0:j0 + len(k)], r, side="left")  # keys ranked before each query
            v, i = kernel.matmul_max(q, k, None if (lim >= len(k)).all() else lim)
            v, i = v[:, 0], i[:, 0]
            better = v > best[i0:i0 + len(q)]  # strict: ties keep the earlier (better-ranked) key
            best[i0:i0 + len(q)][better] = v[better]
            arg[i0:i0 + len(q)][better] = j0 + i[better]
    return best, arg


def assign(kernel: Kernel, vecs: np.ndarray, centroids: np.ndarray, boundary: float | None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row, and the second-nearest when within ``boundary`` in cosine (else -1)."""
    top = 2 if len(centroids) > 1 else 1
    out1, out2 = [], []
    for i0 in range(0, len(vecs), BLOCK):
        v, i = kernel.matmul_max(vecs[i0:i0 + BLOCK], centroids, None, top=top)
        out1.append(i[:, 0].astype(np.int32))
        if top == 2 and boundary is not None and boundary > 0:
            out2.append(np.where(v[:, 0] - v[:, 1] <= boundary, i[:, 1], -1).astype(np.int32))
        else:
            out2.append(np.full(len(v), -1, np.int32))
    if not out1:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    return np.concatenate(out1), np.concatenate(out2)


def train_centroids(sample: np.ndarray, k: int, seed: int = SEED) -> np.ndarray:
    """Spherical k-means (faiss) over ``sample`` -> unit centroids [k, D] float32."""
    import faiss

    x = np.ascontiguousarray(sample, dtype=np.float32)
    k = max(1, min(k, len(x)))
    km = faiss.Kmeans(x.shape[1], k, niter=KMEANS_ITERATIONS, seed=seed, spherical=True,
                      max_points_per_centroid=max(SAMPLE_PER_CENTROID, -(-len(x) // k)), verbose=False)
    km.train(x)
    c = km.centroids.astype(np.float32)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- scratch files
class Scratch:
    """A float16 [rows, D] array in a local scratch file, written and read with ``pwrite``/``pread`` (not a memory
    map: scattered access through a map faults neighbouring pages in, and they all count in RSS; the page
    cache does not)."""

    def __init__(self, rows: int, dim: int, prefix: str = "dedup-") -> None:
        self.fd, self.path = tempfile.mkstemp(prefix=prefix, suffix=".f16", dir=scratch_dir())
        self.rows, self.dim = rows, dim
        self.row_bytes = dim * 2
        os.ftruncate(self.fd, max(rows, 1) * self.row_bytes)

    def write(self, start: int, vecs: np.ndarray) -> None:
        """Rows ``start..start+len(vecs)``."""
        os.pwrite(self.fd, np.ascontiguousarray(vecs, np.float16).tobytes(), start * self.row_bytes)

    def scatter(self, slots: np.ndarray, vecs: np.ndarray) -> None:
        """Row ``slots[i]`` = ``vecs[i]`` (runs of consecutive slots in one write)."""
        if not len(slots):
            return
        o = np.argsort(slots, kind="stable")
        slots, vecs = slots[o], np.ascontiguousarray(vecs[o], np.float16)
        cut = np.flatnonzero(np.diff(slots) != 1) + 1
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(slots)]):
            self.write(int(slots[a]), vecs[a:b])

    def read(self, a: int, b: int) -> np.ndarray:
        """Rows ``a..b`` (clipped to the array) as a new float16 array."""
        n = max(0, min(b, self.rows) - a)
        buf = os.pread(self.fd, n * self.row_bytes, a * self.row_bytes)
        return np.frombuffer(buf, np.float16).reshape(n, self.dim).copy()

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order) as a new float16 array."""
        out = np.empty((len(rows), self.dim), np.float16)
        if not len(rows):
            return out
        o = np.argsort(rows, kind="stable")
        srt = rows[o]
        cut = np.flatnonzero(np.diff(srt) != 1) + 1
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(srt)]):
            out[o[a:b]] = self.read(int(srt[a]), int(srt[b - 1]) + 1)
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: (ranks [n] int64, unit float16 vectors [n, D]) batches
VectorSource = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """Centroids, clip order and assignment of one embedding set (``embeddings/<name>/_dedup``)."""

    set_name: str
    order: pa.Array  # clip ids, best first (index = rank)
    c1: np.ndarray  # [N] int32 nearest centroid
    c2: np.ndarray  # [N] int32 second-nearest within the boundary, else -1
    centroids: np.ndarray  # [K, D] float32 unit
    meta: dict = field(default_factory=dict)
    #: table-order scratch of the vectors (set in the process that made the plan) and the rank of each row
    scratch: Scratch | None = None
    scratch_ranks: np.ndarray | None = None

    @property
    def plan_id(self) -> str:
        return self.meta["plan_id"]

    def cluster_sizes(self) -> np.ndarray:
        k = len(self.centroids)
        return np.bincount(self.c1, minlength=k) + np.bincount(self.c2[self.c2 >= 0], minlength=k)

    def groups(self, n: int) -> np.ndarray:
        """Group of each cluster for ``n`` groups: largest work first to the least-loaded group (work ~ size^2)."""
        sizes = self.cluster_sizes().astype(np.float64)
        load = np.zeros(n)
        out = np.zeros(len(sizes), np.int64)
        for c in np.argsort(-sizes, kind="stable"):
            g = int(load.argmin())
            out[c] = g
            load[g] += sizes[c] ** 2 + sizes[c]
        return out

    def vectors(self, batch_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The plan's scratch vectors in table order, with their ranks."""
        if self.scratch is None:
            raise CurateError("this plan holds no vectors (it was loaded from the root)")
        for a in range(0, len(self.scratch_ranks), batch_rows):
            b = min(len(self.scratch_ranks), a + batch_rows)
            yield self.scratch_ranks[a:b], self.scratch.read(a, b)

    def close(self) -> None:
        if self.scratch is not None:
            self.scratch.close()
            self.scratch = None


def state_rel(set_name: str, *parts: str) -> str:
    return "/".join(["embeddings", set_name, STATE_DIR, *parts])


def fingerprint(**params) -> str:
    """A plan's id: a hash of what decides its result (clip count, centroids, boundary, ranking, table version)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ranks_of(order_index: pa.Array, ids: pa.Array) -> np.ndarray:
    """Rank of each id (its index in the order), -1 for ids not in it."""
    r = pc.index_in(ids, value_set=order_index)
    return r.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def make_plan(root: Root, set_name: str, order: pa.Array, stream: VectorSource, dim: int, *, k: int | None,
              boundary: float | None, kernel: Kernel, keep_vectors: bool = True, centroids: np.ndarray | None = None,
              table_version: int | None = None, by: str | None = None) -> Plan:
    """Stream the vectors once into scratch, train k-means on a sample (unless ``centroids`` are given), assign
    every clip; store centroids, assignment and ``plan.json`` in the root."""
    n = len(order)
    k = choose_k(n) if not k else min(int(k), max(n, 1))
    scratch = Scratch(n, dim, prefix="dedup-plan-")
    try:
        ranks = np.full(n, -1, np.int64)
        pos = 0
        for r, v in stream():
            scratch.write(pos, v)
            ranks[pos:pos + len(r)] = r
            pos += len(r)
        ranks = ranks[:pos]
        if centroids is None:
            rng = np.random.default_rng(SEED)
            s = min(pos, k * SAMPLE_PER_CENTROID)
            pick = np.sort(rng.choice(pos, size=s, replace=False)) if s < pos else np.arange(pos)
            sample = scratch.take(pick).astype(np.float32)
            centroids = train_centroids(sample, k) if len(sample) else np.zeros((1, dim), np.float32)
            del sample
        c1 = np.zeros(n, np.int32)
        c2 = np.full(n, -1, np.int32)
        for a in range(0, pos, 65536):
            b = min(pos, a + 65536)
            x1, x2 = assign(kernel, scratch.read(a, b), centroids, boundary)
            c1[ranks[a:b]], c2[ranks[a:b]] = x1, x2
    except BaseException:  # a failed plan leaves no scratch file behind
        scratch.close()
        raise
    plan_id = fingerprint(n=n, boundary=boundary, version=table_version, by=by,
                          centroids=hashlib.sha1(centroids.tobytes()).hexdigest(),
                          assign=hashlib.sha1(c1.tobytes() + c2.tobytes()).hexdigest())
    meta = {"plan_id": plan_id, "embedding_set": set_name, "table_version": table_version, "clips": n,
            "dim": dim, "k": int(len(centroids)), "boundary": boundary, "by": by,
            "copies": int((c2 >= 0).sum())}
    plan = Plan(set_name, order, c1, c2, centroids, meta, scratch if keep_vectors else None,
                ranks if keep_vectors else None)
    if not keep_vectors:
        scratch.close()
    save_plan(root, plan)
    return plan


def save_plan(root: Root, plan: Plan) -> None:
    """``_dedup/centroids.npy``, ``_dedup/assign.parquet`` (clip ids best first, c1, c2), then ``plan.json``
    (written last: a plan.json names a complete plan)."""
    import io

    buf = io.BytesIO()
    np.save(buf, plan.centroids)
    root.write_bytes(state_rel(plan.set_name, "centroids.npy"), buf.getvalue())
    root.write_parquet(pa.table({"clip_id": plan.order, "c1": plan.c1, "c2": plan.c2}),
                       state_rel(plan.set_name, "assign.parquet"))
    root.write_bytes(state_rel(plan.set_name, "plan.json"), json.dumps(plan.meta, indent=1))


def load_plan(root: Root, set_name: str) -> Plan | None:
    """The stored plan of ``set_name`` (None when there is none)."""
    import io

    meta = root.read_json(state_rel(set_name, "plan.json"), None)
    if not meta:
        return None
    t = root.read_parquet(state_rel(set_name, "assign.parquet"))
    centroids = np.load(io.BytesIO(root.read_bytes(state_rel(set_name, "centroids.npy"))))
    return Plan(set_name, t["clip_id"].combine_chunks(), t["c1"].to_numpy().astype(np.int32),
                t["c2"].to_numpy().astype(np.int32), centroids, meta)


def mark_complete(root: Root, plan: Plan) -> None:
    """Record in ``plan.json`` that the scores hold this plan's result (what an incremental run builds on)."""
    if not plan.meta.get("complete"):
        plan.meta["complete"] = True
        root.write_bytes(state_rel(plan.set_name, "plan.json"), json.dumps(plan.meta, indent=1))


def clear_parts(root: Root, set_name: str) -> None:
    """Remove the group results of earlier plans."""
    rel = state_rel(set_name, "parts")
    if root.exists(rel):
        root.rm(rel, recursive=True)


# ----------------------------------------------------------------------------- groups of clusters
def members(plan: Plan, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster, rank) of every entry of ``clusters`` [bool, K], sorted by cluster then rank, and the
    boundaries of each cluster's run in that order (``starts``)."""
    r1 = np.nonzero(clusters[plan.c1])[0]
    has2 = plan.c2 >= 0
    r2 = np.nonzero(has2 & clusters[np.where(has2, plan.c2, 0)])[0]
    cl = np.concatenate([plan.c1[r1], plan.c2[r2]]).astype(np.int64)
    rk = np.concatenate([r1, r2]).astype(np.int64)
    o = np.lexsort((rk, cl))
    cl, rk = cl[o], rk[o]
    starts = np.flatnonzero(np.r_[True, cl[1:] != cl[:-1]]) if len(cl) else np.zeros(0, np.int64)
    return cl, rk, np.r_[starts, len(cl)]


def gather(plan: Plan, rk: np.ndarray, stream: VectorSource, dim: int) -> Scratch:
    """A scratch file holding the vector of rank ``rk[i]`` at row i (a rank may hold two rows)."""
    n = len(plan.order)
    first = np.full(n, -1, np.int64)
    second = np.full(n, -1, np.int64)
    slots = np.arange(len(rk))
    dup = np.zeros(len(rk), bool)
    if len(rk):
        o = np.argsort(rk, kind="stable")
        srt = rk[o]
        dup[o[1:]] = srt[1:] == srt[:-1]
    first[rk[~dup]] = slots[~dup]
    second[rk[dup]] = slots[dup]
    sc = Scratch(len(rk), dim, prefix="dedup-group-")
    for r, v in stream():
        f = first[r]
        hit = f >= 0
        if hit.any():
            sc.scatter(f[hit], v[hit])
            s = second[r]
            hit2 = s >= 0
            if hit2.any():
                sc.scatter(s[hit2], v[hit2])
    return sc


def reduce_best(rk: np.ndarray, sim: np.ndarray, arg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per rank: the highest sim, ties to the lowest arg rank (-1 = none counts as lowest)."""
    if not len(rk):
        return rk, sim, arg
    a = np.where(arg < 0, np.iinfo(np.int64).max, arg)
    o = np.lexsort((a, -sim, rk))
    rk, sim, arg = rk[o], sim[o], arg[o]
    keep = np.r_[True, rk[1:] != rk[:-1]]
    return rk[keep], sim[keep], arg[keep]


def run_group(plan: Plan, group: int, of: int, stream: VectorSource, kernel: Kernel, *, dim: int,
              new: np.ndarray | None = None, block: int = BLOCK) -> pa.Table:
    """SemDeDup's rule within the clusters of group ``group`` of ``of``: (rank, sim, arg) for each clip of
    those clusters (sim = -inf, arg = -1 when no better-ranked member). ``new`` ([N] bool): only pairs with a
    new clip are compared (incremental)."""
    groups = plan.groups(of)
    mine = groups == group
    if new is not None:  # only clusters that received a new clip
        touched = np.zeros(len(plan.centroids), bool)
        touched[plan.c1[new]] = True
        c2n = plan.c2[new]
        touched[c2n[c2n >= 0]] = True
        mine &= touched
    cl, rk, starts = members(plan, mine)
    out_r, out_s, out_a = [], [], []
    with gather(plan, rk, stream, dim) as sc:
        for a, b in zip(starts[:-1], starts[1:]):
            ranks = rk[a:b]
            vecs = sc.read(a, b)
            if new is None:
                best, arg = prev_best(kernel, vecs, ranks, vecs, ranks, block)
                out_r.append(ranks)
                out_s.append(best)
                out_a.append(np.where(arg >= 0, ranks[np.maximum(arg, 0)], -1))
                out_v = (vecs, arg)
            else:
                isnew = new[ranks]
                nv, nr = vecs[isnew], ranks[isnew]
                best, arg = prev_best(kernel, nv, nr, vecs, ranks, block)  # new vs everyone before it
                out_r.append(nr)
                out_s.append(best)
                out_a.append(np.where(arg >= 0, ranks[np.maximum(arg, 0)], -1))
                ov, orr = vecs[~isnew], ranks[~isnew]
                best2, arg2 = prev_best(kernel, ov, orr, nv, nr, block)  # old vs new clips before it
                out_r.append(orr)
                out_s.append(best2)
                out_a.append(np.where(arg2 >= 0, nr[np.maximum(arg2, 0)], -1))
                out_v = None
            # the stored value of each found pair: float64 from the float16 vectors
            if out_v is not None:
                found = arg >= 0
                out_s[-1] = np.where(found, -np.inf, best).astype(np.float64)
                out_s[-1][found] = pair_cosine(vecs[found], vecs[arg[found]])
            else:
                for j, (qv, kv, ar) in enumerate(((nv, vecs, arg), (ov, nv, arg2))):
                    idx = len(out_s) - 2 + j
                    found = ar >= 0
                    s = np.full(len(ar), -np.inf)
                    s[found] = pair_cosine(qv[found], kv[ar[found]])
                    out_s[idx] = s
    if out_r:
        r, s, a = reduce_best(np.concatenate(out_r), np.concatenate(out_s), np.concatenate(out_a))
    else:
        r, s, a = np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    return pa.table({"rank": r, "sim": s, "arg": a})


def part_rel(plan: Plan, group: int, of: int) -> str:
    return state_rel(plan.set_name, "parts", plan.plan_id, f"n{of}-{group}.parquet")


def missing_parts(root: Root, plan: Plan, of: int) -> list[int]:
    return [g for g in range(of) if not root.exists(part_rel(plan, g, of))]


def stored_part_counts(root: Root, plan: Plan) -> list[int]:
    """The N of every complete set of parts written for this plan."""
    names = root.ls(state_rel(plan.set_name, "parts", plan.plan_id)) if root.exists(
        state_rel(plan.set_name, "parts", plan.plan_id)) else []
    ns = sorted({int(os.path.basename(p).split("-")[0][1:]) for p in names if os.path.basename(p).startswith("n")})
    return [n for n in ns if not missing_parts(root, plan, n)]


def merge_parts(parts: list[pa.Table], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sim [n] float64, -1 when none; arg [n] int64 rank, -1 when none) from group results."""
    sim = np.full(n, -1.0)
    arg = np.full(n, -1, np.int64)
    if parts:
        t = pa.concat_tables(parts)
        r, s, a = reduce_best(t["rank"].to_numpy(), t["sim"].to_numpy(), t["arg"].to_numpy())
        found = a >= 0
        sim[r[found]] = s[found]
        arg[r[found]] = a[found]
    return sim, arg
