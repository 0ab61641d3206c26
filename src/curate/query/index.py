"""The faiss IVF index of an embedding set: build, load (cached per process), query.

A faiss ``IndexIVFFlat`` (inner product, full float32 vectors, so scores are exact cosines of the candidates it
visits) is built once and stored under ``ROOT/index/<name>/`` with the clip-id order and a fingerprint of the
embeddings table (its Lance version and row count, and ``_meta.json``); an index whose fingerprint no longer
matches is rebuilt. ``nprobe`` lists out of ``nlist`` are visited; visiting all of them makes the index search
exhaustive. :func:`curate.query.search.search` decides when to use it.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.embeddings import EmbeddingSet
from curate.errors import CurateError
from curate.store import Root, safe_name
from curate.vectors import order_by_score

__all__ = ["DEFAULT_NPROBE", "FAISS_HINT", "LoadedIndex", "build_index", "clear_cache", "embedding_set",
           "faiss_available", "fingerprint", "index_dir", "index_status", "index_topk", "load_index"]

#: inverted lists visited per query (out of nlist ~ sqrt(vectors))
DEFAULT_NPROBE = 32
FAISS_HINT = "pip install faiss-cpu"

Log = Callable[[str], None]


def _root(root: Root | str) -> Root:
    return root if isinstance(root, Root) else Root(root)


def embedding_set(root: Root, name: str) -> EmbeddingSet:
    """The set ``name``, its metadata checked (a readable error when it is missing or malformed)."""
    es = EmbeddingSet(root, name)
    es.meta  # noqa: B018  (validates)
    return es


def fingerprint(root: Root | str, name: str) -> str:
    """Changes whenever ``embeddings/<name>`` gets a new version (a write, a compaction) or ``_meta.json`` changes."""
    root = _root(root)
    table = root.embeddings(name)
    d = table.dataset()
    h = hashlib.sha256()
    h.update(f"{getattr(d, 'version', None)}\x1f{d.count_rows() if d is not None else 0}\n".encode())
    h.update(json.dumps(root.embedding_meta(name), sort_keys=True).encode())
    return h.hexdigest()[:32]


def faiss_available() -> bool:
    """Whether faiss is installed (``pip install faiss-cpu``)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss():
    try:
        import faiss
    except ImportError:
        raise CurateError(f"The search index needs faiss, which is not installed ({FAISS_HINT}); "
                          "use exact search (--exact) instead.") from None
    return faiss


def index_dir(root: Root, name: str) -> str:
    """The index's directory, relative to the root."""
    return f"index/{safe_name(name)}"


@dataclass
class LoadedIndex:
    """A stored index in memory: its meta, the faiss index and the clip id of each row."""

    name: str
    meta: dict
    index: Any  # faiss.IndexIVFFlat
    clip_ids: pa.Array  # row -> clip id; vector id = row * q + query
    q: int

    @property
    def rows(self) -> int:
        return len(self.clip_ids)


_INDEX_CACHE: OrderedDict[tuple[str, str], LoadedIndex] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def index_status(root: Root | str, name: str) -> dict[str, Any]:
    """``{"exists", "fresh", "meta"}`` of ``ROOT/index/<name>``."""
    root = _root(root)
    meta = root.read_json(f"{index_dir(root, name)}/meta.json")
    if meta is None:
        return {"exists": False, "fresh": False, "meta": {}}
    return {"exists": True, "fresh": meta.get("fingerprint") == fingerprint(root, name), "meta": meta}


def build_index(root: Root | str, name: str, *, nlist: int | None = None, train_size: int | None = None,
                seed: int = 0, log: Log | None = None) -> dict[str, Any]:
    """Build ``ROOT/index/<name>/`` from ``embeddings/<name>`` (two streaming passes); returns its meta.

    ``nlist`` defaults to sqrt(vectors) (at least 39 training vectors per list); ``train_size`` to
    64 vectors per list, sampled uniformly (seeded) over the table.
    """
    faiss = _faiss()
    root = _root(root)
    es = embedding_set(root, name)
    if es.encoder_similarity:
        raise CurateError(f"embeddings/{name} score with the {es.encoder} encoder's own similarity; an inner-product "
                          "index cannot rank by it. Use exact search (--exact).")
    log = log or (lambda m: None)
    t0 = time.perf_counter()
    with root.lock(f"index-{name}"):
        fp = fingerprint(root, name)
        upper = max(1, es.count())
        rows_guess = upper * es.queries
        nl = nlist or max(1, min(round(math.sqrt(rows_guess)), rows_guess // 39))
        n_train = train_size or min(rows_guess, 64 * nl)
        rng = np.random.default_rng(seed)
        p_keep = min(1.0, n_train / rows_guess)
        ids_parts: list[pa.Array] = []
        sample: list[np.ndarray] = []
        for ids, vecs, _ in es.vectors():  # pass 1: clip-id order and a training sample
            ids_parts.append(ids)
            flat = vecs.reshape(-1, es.dim)
            pick = rng.random(len(flat)) < p_keep
            if pick.any():
                sample.append(flat[pick].copy())
        n = sum(len(a) for a in ids_parts)
        if n == 0:
            raise CurateError(f"embeddings/{name} has no ok clip embeddings to index.")
        train = np.concatenate(sample) if sample else np.zeros((0, es.dim), np.float32)
        nv = n * es.queries
        nl = min(nl, max(1, nv // 39)) if nlist is None else max(1, min(nlist, nv))
        if len(train) < nl:  # tiny tables: train on everything
            train = np.concatenate([v.reshape(-1, es.dim) for _, v, _ in es.vectors()])
        log(f"index {name}: training IVF{nl} on {len(train)} of {nv} vectors (dim {es.dim})")
        quantizer = faiss.IndexFlatIP(es.dim)
        index = faiss.IndexIVFFlat(quantizer, es.dim, nl, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        t_train = time.perf_counter() - t0
        added = 0
        for ids, vecs, _ in es.vectors():  # pass 2: vector id = row * Q + query
            index.add(np.ascontiguousarray(vecs.reshape(-1, es.dim)))
            added += len(ids)
        if added != n or fingerprint(root, name) != fp:
            raise CurateError(f"embeddings/{name} changed while the index was being built; run the search again.")
        d = index_dir(root, name)
        build = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
        files = {"index": f"index-{build}.faiss", "clip_ids": f"clip_ids-{build}.parquet"}
        with root.local_output(f"{d}/{files['index']}") as tmp:
            faiss.write_index(index, str(tmp))
        root.write_parquet(pa.table({"clip_id": pa.concat_arrays([a.combine_chunks() if isinstance(a, pa.ChunkedArray)
                                                                  else a for a in ids_parts])}), f"{d}/{files['clip_ids']}")
        meta = {"embeddings": name, "fingerprint": fp, "kind": "faiss.IndexIVFFlat", "metric": "inner_product",
                "rows": n, "queries_per_clip": es.queries, "dim": es.dim, "vectors": int(index.ntotal), "nlist": nl,
                "train_vectors": len(train), "files": files, "faiss": getattr(faiss, "__version__", "?"),
                "built_at": time.time(), "build_seconds": round(time.perf_counter() - t0, 3),
                "train_seconds": round(t_train, 3)}
        root.write_bytes(f"{d}/meta.json", json.dumps(meta, indent=2))  # readers follow meta.json: atomic switch
        for p in root.ls(d, dirs=False):
            if p not in (*files.values(), "meta.json") and not p.startswith(".tmp-"):
                root.rm(f"{d}/{p}")
        log(f"index {name}: {n} clips ({nv} vectors) in {meta['build_seconds']:.1f} s -> {root.url(d)}")
        return meta


def load_index(root: Root | str, name: str, *, mmap: bool = True) -> LoadedIndex | None:
    """The stored index of ``name`` when it matches the embeddings table, else None (missing or stale).

    Loaded indexes are cached per process (the Airflow webserver calls :func:`search_subset` often).
    """
    root = _root(root)
    faiss = _faiss()
    key = (str(root), name)
    st = index_status(root, name)
    if not st["fresh"]:
        with _CACHE_LOCK:
            _INDEX_CACHE.pop(key, None)
        return None
    meta = st["meta"]
    with _CACHE_LOCK:
        hit = _INDEX_CACHE.get(key)
        if hit is not None and hit.meta.get("files") == meta.get("files"):
            _INDEX_CACHE.move_to_end(key)
            return hit
    d = index_dir(root, name)
    try:
        path = str(root.media_file(f"{d}/{meta['files']['index']}"))  # a cached local copy when remote
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) if mmap else faiss.read_index(path)
        ids = root.read_parquet(f"{d}/{meta['files']['clip_ids']}")["clip_id"].combine_chunks()
    except (OSError, RuntimeError, KeyError):  # replaced by a concurrent rebuild, or damaged: rebuild
        return None
    if len(ids) * int(meta["queries_per_clip"]) != index.ntotal:
        return None
    loaded = LoadedIndex(name, meta, index, ids, int(meta["queries_per_clip"]))
    with _CACHE_LOCK:
        _INDEX_CACHE[key] = loaded
        while len(_INDEX_CACHE) > 4:
            _INDEX_CACHE.popitem(last=False)
    return loaded


def index_topk(loaded: LoadedIndex, query_vector: np.ndarray, k: int = 10, *, allowed: pa.Array | None = None,
               nprobe: int = DEFAULT_NPROBE) -> tuple[list[str], np.ndarray]:
    """The k best clips from the index (score desc, clip id asc); doubles nprobe until k clips are found."""
    faiss = _faiss()
    q = np.ascontiguousarray(np.asarray(query_vector, np.float32).reshape(1, -1))
    if q.shape[1] != loaded.meta["dim"]:
        raise CurateError(f"query vector has {q.shape[1]} dims, the index of {loaded.name} has {loaded.meta['dim']}.")
    nlist = int(loaded.meta["nlist"])
    sel = bitmap = None
    n_allowed = loaded.rows
    if allowed is not None:
        rows = np.nonzero(pc.is_in(loaded.clip_ids, value_set=allowed).to_numpy(zero_copy_only=False))[0]
        n_allowed = len(rows)
        if n_allowed == 0:
            return [], np.zeros(0, np.float32)
        mask = np.zeros(loaded.index.ntotal, dtype=bool)
        mask[(rows[:, None] * loaded.q + np.arange(loaded.q)[None, :]).ravel()] = True
        bitmap = np.packbits(mask, bitorder="little")
        sel = faiss.IDSelectorBitmap(loaded.index.ntotal, faiss.swig_ptr(bitmap))
    want = min(k, n_allowed)
    m = min(k * loaded.q, n_allowed * loaded.q)
    probe = max(1, min(nprobe, nlist))
    while True:
        params = faiss.SearchParametersIVF(nprobe=probe, sel=sel) if sel is not None else \
            faiss.SearchParametersIVF(nprobe=probe)
        dist, labels = loaded.index.search(q, m, params=params)
        seen: dict[int, float] = {}
        for lab, s in zip(labels[0].tolist(), dist[0].tolist()):
            if lab < 0:
                break
            row = lab // loaded.q
            if row not in seen:  # results come best first: the first hit of a clip is its max over queries
                seen[row] = s
        if len(seen) >= want or probe >= nlist:
            break
        probe = min(nlist, probe * 2)
    del bitmap  # the selector reads it until here
    rows = np.fromiter(seen.keys(), dtype=np.int64, count=len(seen))
    scores = np.fromiter(seen.values(), dtype=np.float32, count=len(seen))
    ids = loaded.clip_ids.take(pa.array(rows, pa.int64())).to_pylist() if len(rows) else []
    o = order_by_score(ids, scores)[:k]
    return [ids[i] for i in o], scores[o]


def clear_cache() -> None:
    """Forget the indexes loaded in this process (the next :func:`load_index` reads the files again)."""
    with _CACHE_LOCK:
        _INDEX_CACHE.clear()

