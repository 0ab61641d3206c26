"""Dedup at scale: wall, peak RSS and recall of the clustered method (SemDeDup) against exact.

    PYTHONPATH=src .venv/bin/python bench/bench_dedup.py --n 100000 [--exact] [--dim 512] [--json out.json]
    PYTHONPATH=src .venv/bin/python bench/bench_dedup.py --n 1000000 --sample 2000
    CURATE_SCRATCH=/fast/disk PYTHONPATH=src .venv/bin/python bench/bench_dedup.py --n 10000000 --sample 1000

Writes N synthetic unit vectors (``--dim``, float32) straight into an embedding set of a fresh root, through
the store's API (no video): ``N / 1000`` blob centres (background cosine ~0.5 within a blob, ~0 across) and
1% of the clips in planted groups of 2-4 near-duplicates (cosine 0.96-0.995 to the group's first clip), plus a
random ``quality`` score column that ranks them. Then each method runs in a fresh process (so its peak RSS is
its own: ``ru_maxrss`` of that process), through ``DedupScorer.compute`` as ``curate score -s dedup`` runs it:

- recall of planted duplicates: of the planted clips that are not the best-ranked of their group, the share
  with ``dup_sim >= 0.9``;
- recall against exact: with ``--exact``, every clip whose exact ``dup_sim >= 0.9`` (and the share of all clips
  with identical ``dup_sim``/``dup_of``); else ``--sample`` clips brute-forced against every better-ranked clip.

The root is under ``--dir`` (default: a temporary directory, removed at the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from dedup_data import SET, near, unit, write_set  # noqa: E402

DUP = 0.9
CHUNK = 100_000


def make_root(path: Path, n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Write the set in chunks (memory bounded); returns the planted group of each clip (-1: background)."""
    from curate.store import Root

    rng = np.random.default_rng(seed)
    blobs = max(8, n // 1000)
    centres = unit(rng.standard_normal((blobs, dim))).astype(np.float32)
    root = Root(path).ensure()
    groups = np.full(n, -1, np.int64)
    quality = rng.random(n)
    next_group = 0
    for a in range(0, n, CHUNK):
        m = min(CHUNK, n - a)
        which = rng.integers(0, blobs, m)
        vec = unit(centres[which] + rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim))
        g = np.full(m, -1, np.int64)
        # 1% of the rows in groups: a group is a row and 1-3 copies of it in the rows after it
        starts = np.flatnonzero(rng.random(m) < 0.01 / 3)
        sizes = rng.integers(2, 5, len(starts))
        last = -1
        for i, size in zip(starts, sizes):
            if i <= last or i + size > m:
                continue
            cos = rng.uniform(0.96, 0.995, size - 1)
            vec[i + 1:i + size] = near(np.repeat(vec[i][None].astype(np.float64), size - 1, 0), cos, rng)
            g[i:i + size] = next_group
            next_group += 1
            last = i + size - 1
        ids = [f"c{j:09d}" for j in range(a, a + m)]
        write_set(root, ids, vec.astype(np.float32))
        groups[a:a + m] = g
    root.scores.upsert(pa.table({"clip_id": pa.array([f"c{j:09d}" for j in range(n)]), "quality": quality}))
    return groups


def run_method(root: str, method: str, out: str, options: dict) -> None:
    """In this (fresh) process: the dedup scorer over every clip; result to ``out``, stats to stdout."""
    import pyarrow.parquet as pq

    from curate.scorers.dedup import DedupScorer
    from curate.store import Root

    r = Root(root)
    ids = r.embeddings(SET).read_arrow(columns=["clip_id"])["clip_id"].combine_chunks()
    t0 = time.perf_counter()
    res = DedupScorer(method=method, by="quality", **options).compute(r, ids)
    wall = time.perf_counter() - t0
    pq.write_table(res, out)
    plan = r.read_json(f"embeddings/{SET}/_dedup/plan.json", None) if method != "exact" else None
    print(json.dumps({"method": method, "wall_s": round(wall, 2),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "k": plan and plan["k"], "copies": plan and plan["copies"]}))


def child(root: Path, method: str, out: Path, options: dict) -> dict:
    cmd = [sys.executable, __file__, "--run", str(root), "--method", method, "--out", str(out),
           "--options", json.dumps(options)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def read_result(path: Path):
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pandas().set_index("clip_id")
    return t


def planted_recall(res, groups: np.ndarray, quality: np.ndarray) -> float:
    ids = np.array([f"c{j:09d}" for j in range(len(groups))])
    want = []
    for g in np.unique(groups[groups >= 0]):
        m = np.flatnonzero(groups == g)
        best = m[np.lexsort((ids[m], -quality[m]))[0]]
        want += [i for i in m if i != best]
    got = res.dup_sim.reindex(ids[want]).to_numpy()
    return float((got >= DUP).mean()) if want else float("nan")


def sample_exact(root: Path, sample: int, seed: int = 1) -> dict:
    """Exact dup_sim/dup_of of ``sample`` random clips: each against every better-ranked clip (float16 vectors,
    float64 cosine, as both methods store it)."""
    from curate.embeddings import EmbeddingSet
    from curate.scorers import semdedup as sd
    from curate.scorers.dedup import DedupScorer, table_stream
    from curate.store import Root

    r = Root(root)
    es = EmbeddingSet(r, SET)
    s = DedupScorer(by="quality")
    order = s.order(r, es, es.clip_ids())
    n = len(order)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(np.arange(1, n), size=min(sample, n - 1), replace=False))
    pv = np.zeros((len(picks), es.dim), np.float16)
    stream = table_stream(es, order)
    for rk, v in stream():  # first pass: the sampled clips' vectors
        at = np.searchsorted(picks, rk)
        hit = (at < len(picks)) & (picks[np.minimum(at, len(picks) - 1)] == rk)
        pv[at[hit]] = v[hit]
    best = np.full(len(picks), -np.inf, np.float32)
    arg = np.full(len(picks), -1, np.int64)
    argv = np.zeros_like(pv)
    for rk, v in stream():  # second pass: each against every better-ranked clip
        s_ = pv.astype(np.float32) @ v.astype(np.float32).T
        s_[rk[None, :] >= picks[:, None]] = -np.inf
        j = s_.argmax(1)
        val = s_[np.arange(len(picks)), j]
        better = (val > best) | ((val == best) & (rk[j] < arg))
        best[better], arg[better], argv[better] = val[better], rk[j][better], v[j][better]
    sims = sd.pair_cosine(pv, argv)
    return {order[int(p)].as_py(): (float(sims[i]), order[int(arg[i])].as_py()) for i, p in enumerate(picks)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--exact", action="store_true", help="also run exact (N^2: about a minute per 100k^2)")
    ap.add_argument("--sample", type=int, default=1000, help="clips brute-forced when exact is not run")
    ap.add_argument("--boundary", default=None, help="the clustered method's boundary (default: its own)")
    ap.add_argument("--k", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--run", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run:
        return run_method(a.run, a.method, a.out, json.loads(a.options))
    base = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    root = base / "ds"
    try:
        t0 = time.perf_counter()
        if (base / "groups.npy").exists() and a.keep:  # --dir of a kept run: the same set again
            groups = np.load(base / "groups.npy")
        else:
            groups = make_root(root, a.n, a.dim)
            np.save(base / "groups.npy", groups)
        from curate.store import Root

        q = Root(root).scores.read_arrow(columns=["clip_id", "quality"]).sort_by("clip_id")["quality"].to_numpy()
        report = {"n": a.n, "dim": a.dim, "cores": os.cpu_count(), "write_s": round(time.perf_counter() - t0, 1),
                  "planted_groups": int(groups.max() + 1)}
        opts = {k: v for k, v in (("boundary", a.boundary), ("k", a.k), ("device", a.device)) if v is not None}
        cl = child(root, "clustered", base / "clustered.parquet", opts)
        res = read_result(base / "clustered.parquet")
        cl["recall_planted"] = round(planted_recall(res, groups, q), 5)
        report["clustered"] = cl
        if a.exact:
            ex = child(root, "exact", base / "exact.parquet", {"device": a.device})
            exr = read_result(base / "exact.parquet")
            ex["recall_planted"] = round(planted_recall(exr, groups, q), 5)
            report["exact"] = ex
            d = exr.dup_sim >= DUP
            cl["recall_vs_exact"] = round(float(((res.dup_of[d] == exr.dup_of[d]) & (res.dup_sim[d] == exr.dup_sim[d]))
                                                .mean()), 5)
            cl["same_as_exact_all_clips"] = round(float((res.dup_sim == exr.dup_sim).mean()), 5)
            report["speedup"] = round(ex["wall_s"] / cl["wall_s"], 1)
        elif a.sample:
            ref = sample_exact(root, a.sample)
            dups = [c for c, (s, _) in ref.items() if s >= DUP]
            cl["sample"] = len(ref)
            cl["sample_dups"] = len(dups)
            cl["recall_vs_exact_sample"] = round(float(np.mean([res.dup_of[c] == ref[c][1] and res.dup_sim[c] == ref[c][0]
                                                               for c in dups])), 5) if dups else None
            cl["same_as_exact_sample"] = round(float(np.mean([res.dup_sim[c] == ref[c][0] for c in ref])), 5)
        print(json.dumps(report, indent=1))
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=1))
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
