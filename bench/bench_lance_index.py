"""Lance's own vector index against the faiss IVF index `curate search` builds (issue #13 item 5).

Same vectors, same queries, back to back in one process: N clumped unit vectors (as bench_search.py draws
them: around ``--clusters`` centres, cosine to the centre ~0.64) written once as a Lance dataset with a
``FixedSizeList<float32>[D]`` column (Lance indexes only fixed-size vectors; curate's embeddings tables hold
``list<float32>`` today), then:

* faiss ``IndexIVFFlat`` (inner product; what :func:`curate.query.search.build_index` builds, nlist = 4 sqrt N),
  trained on the same sample size: build seconds, p50/p95 query ms and recall@k for each ``--nprobe``;
* Lance ``IVF_FLAT`` and ``IVF_PQ`` (metric dot, same partition count): build seconds and the same figures
  for ``nprobes`` (with ``refine_factor`` for PQ), through ``dataset.to_table(nearest=...)``.

Recall is against the exact top-k (numpy). Reproduce (2 cores, no GPU)::

    PYTHONPATH=src .venv/bin/python bench/bench_lance_index.py --n 200000 --dim 512 --queries 100 \
        --nprobe 8 32 128 --json bench_lance_index.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

os.environ.setdefault("LANCE_LOG", "error")  # not a warning per empty partition and per query


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def draw(rng, centres, n, spread):
    d = centres.shape[1]
    z = rng.integers(0, len(centres), n)
    return unit(centres[z] + spread * rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d, dtype=np.float32))


def pct(ms: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def recall(got: list[np.ndarray], want: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(g[:k].tolist()) & set(w[:k].tolist())) / k for g, w in zip(got, want)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=1.2)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--pq", action=argparse.BooleanOptionalAction, default=True, help="also IVF_PQ")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import faiss
    import lance

    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((a.clusters, a.dim), dtype=np.float32))
    x = draw(rng, centres, a.n, a.spread).astype(np.float32)
    q = draw(rng, centres, a.queries, a.spread).astype(np.float32)
    exact = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, : a.k]
    nlist = max(1, min(int(4 * math.sqrt(a.n)), a.n // 39))
    out: dict = {"n": a.n, "dim": a.dim, "queries": a.queries, "k": a.k, "nlist": nlist,
                 "machine": f"{platform.machine()}, {os.cpu_count()} cores", "faiss": {}, "lance": {}}

    # faiss IndexIVFFlat as curate builds it
    t0 = time.perf_counter()
    quant = faiss.IndexFlatIP(a.dim)
    index = faiss.IndexIVFFlat(quant, a.dim, nlist, faiss.METRIC_INNER_PRODUCT)
    train = x[rng.choice(a.n, size=min(a.n, 256 * nlist), replace=False)]
    index.train(train)
    index.add(x)
    out["faiss"]["build_s"] = round(time.perf_counter() - t0, 2)
    for p in a.nprobe:
        index.nprobe = p
        ms, got = [], []
        for v in q:
            t = time.perf_counter()
            _, ids = index.search(v[None], a.k)
            ms.append((time.perf_counter() - t) * 1000)
            got.append(ids[0])
        out["faiss"][f"nprobe={p}"] = {**pct(ms), "recall@k": round(recall(got, exact, a.k), 4)}
    print(json.dumps(out["faiss"]), flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench-lance-index-"))
    try:
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), a.dim)
        t0 = time.perf_counter()
        ds = lance.write_dataset(pa.table({"row": np.arange(a.n), "vector": vec}), str(tmp / "v.lance"))
        out["lance"]["write_s"] = round(time.perf_counter() - t0, 2)
        kinds = [("IVF_FLAT", {}), *([("IVF_PQ", {"num_sub_vectors": a.dim // 8})] if a.pq else [])]
        for kind, extra in kinds:
            t0 = time.perf_counter()
            ds.create_index("vector", kind, metric="dot", num_partitions=nlist, replace=True, **extra)
            res = {"build_s": round(time.perf_counter() - t0, 2)}
            ds = lance.dataset(str(tmp / "v.lance"))
            for p in a.nprobe:
                for refine in ([None] if kind == "IVF_FLAT" else [None, 10]):
                    ms, got = [], []
                    for v in q:
                        t = time.perf_counter()
                        near = {"column": "vector", "q": v, "k": a.k, "nprobes": p}
                        if refine:
                            near["refine_factor"] = refine
                        tb = ds.to_table(nearest=near, columns=["row"])
                        ms.append((time.perf_counter() - t) * 1000)
                        got.append(np.asarray(tb["row"]))
                    key = f"nprobe={p}" + (f",refine={refine}" if refine else "")
                    res[key] = {**pct(ms), "recall@k": round(recall(got, exact, a.k), 4)}
            out["lance"][kind] = res
            print(kind, json.dumps(res), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
