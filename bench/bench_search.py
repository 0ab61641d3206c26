"""Query latency of `curate search` over a large embeddings table: exact streaming vs the faiss IVF index.

Writes N synthetic unit vectors (default 1,000,000 x 512, float32) as a real ``embeddings/<name>``
table (Parquet parts, as `curate embed` writes them, plus clips and sources tables) under a
temporary root, then measures:

* exact search (:func:`curate.query.search.exact_topk`, streaming every part) and the whole
  :func:`curate.query.search.search` call (top-k plus the clips/sources lookup of the hits), p50/p95 ms;
* the index build time (:func:`curate.query.search.build_index`, two streaming passes, k-means training,
  adding every vector) and the time to load it;
* index queries (:func:`curate.query.search.index_topk` and the whole ``search`` call) for several
  ``nprobe``, p50/p95 ms, and recall@k against the exact top-k.

Vectors are drawn around ``--clusters`` random centres (cosine to the centre ~0.64, like the clumped
embeddings a real encoder gives) unless ``--uniform`` (uniformly on the sphere: no structure, the
worst case for any ANN index). Queries are new draws from the same mixture. The text encoder is not
part of the measurement (a query vector is passed).

Reproduce (2 CPU cores, no GPU; about 10 minutes and 5 GB of disk for N = 1M)::

    PYTHONPATH=src .venv/bin/python bench/bench_search.py --n 1000000 --dim 512 --queries 200 \
        --exact-queries 5 --nprobe 8 32 128 --json bench_search.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.query import search as S
from curate.store import Root


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def draw(rng, centres, n, spread, uniform):
    d = centres.shape[1]
    if uniform:
        return unit(rng.standard_normal((n, d), dtype=np.float32))
    z = rng.integers(0, len(centres), n)
    return unit(centres[z] + spread * rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d, dtype=np.float32))


def write_root(path: Path, n: int, dim: int, queries: np.ndarray, k: int, *, rows_per_part: int, rng, centres,
               spread, uniform, name: str) -> tuple[Root, list[list[str]], float]:
    """Write the tables; returns the root, the exact top-k ids of each query (computed while writing), seconds."""
    t0 = time.perf_counter()
    root = Root(path).ensure()
    n_src = max(1, n // 1000)
    root.sources.append(pa.table({"source_id": [f"src{j:06d}" for j in range(n_src)],
                                  "url": [f"https://example.org/video{j}.mp4" for j in range(n_src)],
                                  "status": ["ok"] * n_src}))
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    table = root.embeddings(name)
    for a in range(0, n, rows_per_part):
        b = min(n, a + rows_per_part)
        x = draw(rng, centres, b - a, spread, uniform).astype(np.float32)
        ids = [f"syn{i:08d}" for i in range(a, b)]
        offsets = pa.array(np.arange(0, (b - a + 1) * dim, dim, dtype=np.int32))
        emb = pa.ListArray.from_arrays(offsets, pa.array(x.ravel(), pa.float32()))
        table.append(pa.table({"clip_id": ids, "video_emb": emb, "status": ["ok"] * (b - a)}))
        root.clips.append(pa.table({"clip_id": ids, "source_id": [f"src{(i // 1000) % n_src:06d}" for i in range(a, b)],
                                    "start_s": np.arange(a, b, dtype=np.float64) % 1000 * 2.0,
                                    "end_s": np.arange(a, b, dtype=np.float64) % 1000 * 2.0 + 2.0,
                                    "caption": [f"synthetic clip {i}" for i in range(a, b)],
                                    "status": ["ok"] * (b - a)}))
        s = queries @ x.T  # running exact top-k (ties by id: ids increase with the row)
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(a, b), s.shape)], axis=1)
        o = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, o, 1)
        best_i = np.take_along_axis(cand_i, o, 1)
    root.write_bytes(f"embeddings/{name}/_meta.json",
                     json.dumps({"encoder": "synthetic", "options": {}, "weights": "none", "model": "synthetic",
                                 "embed_dim": dim, "video_emb_shape": [dim], "similarity": "cosine"}))
    truth = [[f"syn{i:08d}" for i in row] for row in best_i]
    return root, truth, time.perf_counter() - t0


def pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000.0
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "n": len(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="stored embeddings")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=200, help="index queries per nprobe")
    ap.add_argument("--exact-queries", type=int, default=5, help="exact queries (each streams the whole table)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--spread", type=float, default=1.2, help="noise norm around a centre (centre norm 1)")
    ap.add_argument("--uniform", action="store_true", help="uniform unit vectors (no structure)")
    ap.add_argument("--rows-per-part", type=int, default=65536)
    ap.add_argument("--root", type=Path, default=None, help="where to write the root (default: a temporary dir)")
    ap.add_argument("--keep", action="store_true", help="keep the root afterwards")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    centres = unit(rng.standard_normal((args.clusters, args.dim), dtype=np.float32))
    nq = max(args.queries, args.exact_queries)
    queries = draw(rng, centres, nq, args.spread, args.uniform).astype(np.float32)
    base = args.root or Path(tempfile.mkdtemp(prefix="curate-bench-search-"))
    name = "syn"
    out: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                             "gpu": "none used"},
                 "n": args.n, "dim": args.dim, "k": args.k, "data": "uniform" if args.uniform else
                 f"{args.clusters} clusters, spread {args.spread}"}
    try:
        import faiss

        out["faiss"] = faiss.__version__
        faiss_threads = faiss.omp_get_max_threads()
    except ImportError:
        faiss_threads = None
    out["faiss_threads"] = faiss_threads
    try:
        root, truth, t_write = write_root(base / "ds", args.n, args.dim, queries, args.k,
                                          rows_per_part=args.rows_per_part, rng=rng, centres=centres,
                                          spread=args.spread, uniform=args.uniform, name=name)
        size = root.du(f"embeddings/{name}")
        out["write_seconds"] = round(t_write, 1)
        out["table_bytes"] = size
        out["parts"] = root.embeddings(name).fragments()
        print(f"wrote {args.n} x {args.dim} in {out['parts']} fragments ({size / 2**30:.2f} GiB) in {t_write:.1f} s", flush=True)

        lat, lat_full, ok = [], [], 0
        for i in range(args.exact_queries):
            t = time.perf_counter()
            ids, _ = S.exact_topk(root, name, queries[i], args.k)
            lat.append(time.perf_counter() - t)
            ok += ids == truth[i]
            t = time.perf_counter()
            r = S.search(root, None, name, k=args.k, method="exact", query_vector=queries[i])
            lat_full.append(time.perf_counter() - t)
            assert [h["clip_id"] for h in r["results"]] == ids
        out["exact"] = {**pct(lat), "search_call": pct(lat_full), "matches_truth": f"{ok}/{args.exact_queries}"}
        print(f"exact: {out['exact']}", flush=True)

        if faiss_threads is None:
            out["index"] = "faiss not installed"
        else:
            t = time.perf_counter()
            meta = S.build_index(root, name, log=lambda m: print(m, flush=True))
            out["index_build_seconds"] = round(time.perf_counter() - t, 2)
            out["index_train_seconds"] = meta["train_seconds"]
            out["index_nlist"] = meta["nlist"]
            out["index_bytes"] = root.du(f"index/{name}")
            S.clear_cache()
            t = time.perf_counter()
            loaded = S.load_index(root, name)
            out["index_load_seconds"] = round(time.perf_counter() - t, 3)
            out["index"] = {}
            for nprobe in args.nprobe:
                lat, lat_full, hits = [], [], 0
                for i in range(args.queries):
                    t = time.perf_counter()
                    ids, _ = S.index_topk(loaded, queries[i], args.k, nprobe=nprobe)
                    lat.append(time.perf_counter() - t)
                    hits += len(set(ids) & set(truth[i]))
                for i in range(min(args.queries, 50)):
                    t = time.perf_counter()
                    S.search(root, None, name, k=args.k, method="index", nprobe=nprobe, query_vector=queries[i])
                    lat_full.append(time.perf_counter() - t)
                out["index"][f"nprobe={nprobe}"] = {**pct(lat), "search_call": pct(lat_full),
                                                    f"recall@{args.k}": round(hits / (args.queries * args.k), 4)}
                print(f"index nprobe={nprobe}: {out['index'][f'nprobe={nprobe}']}", flush=True)
    finally:
        if not args.keep and args.root is None:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
