"""Text-to-clip search over stored embeddings: exact (streaming) or through a faiss IVF index.

A query is embedded with the encoder configuration recorded in ``embeddings/<name>/_meta.json``
(same encoder, same options), so the query and the clips share one space. Clips are ranked by the
set's similarity (:class:`curate.embeddings.EmbeddingSet`): the cosine of unit vectors (for encoders
that store ``[Q, D]`` query stacks the maximum over the Q queries), or the encoder's own ``similarity``
when it overrides it (exact search only). Ties are broken by clip id, so every path returns the same
order. Contact sheets of the hits: :mod:`curate.query.sheets`.

Two ways to find the top k:

* exact: streams ``embeddings/<name>`` in Arrow batches and keeps a running top-k, so
  memory stays at one batch (about 64 MB) whatever the size of the table;
* index: a faiss ``IndexIVFFlat`` (inner product, full float32 vectors, so scores are exact cosines
  of the candidates it visits) built once and stored under ``ROOT/index/<name>/`` with the clip-id
  order and a fingerprint of the embeddings table (part names, sizes, mtimes and ``_meta.json``); an
  index whose fingerprint no longer matches is rebuilt. ``nprobe`` lists out of ``nlist`` are
  visited; visiting all of them makes the index search exhaustive.

``search`` picks the index above ``index_threshold`` candidate clips (when faiss is installed) and
exact search below it. ``search_subset`` is the entry point for the Airflow plugin page.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.captions import caption_texts, require_captions
from curate.embeddings import EmbeddingSet
from curate.errors import CurateError
from curate.store import Root, safe_name
from curate.store.names import caption_source_label, parse_caption_source

__all__ = [
    "DEFAULT_INDEX_THRESHOLD",
    "DEFAULT_NPROBE",
    "FAISS_HINT",
    "build_index",
    "embed_query",
    "embedding_set",
    "exact_topk",
    "fingerprint",
    "index_status",
    "index_topk",
    "load_index",
    "published_clip_ids",
    "search",
    "search_subset",
]

#: above this many candidate clips ``method="auto"`` uses the index (when faiss is installed)
DEFAULT_INDEX_THRESHOLD = 100_000
#: inverted lists visited per query (out of nlist ~ sqrt(vectors))
DEFAULT_NPROBE = 32
MAX_K = 1000
MAX_QUERY_CHARS = 1000
FAISS_HINT = "pip install faiss-cpu"

Log = Callable[[str], None]


def _root(root: Root | str | os.PathLike) -> Root:
    return root if isinstance(root, Root) else Root(root)


# ----------------------------------------------------------------------------- the embedding set
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


def published_clip_ids(root: Root | str, subset: str) -> pa.Array:
    """Clip ids published in ``subsets/<subset>/annotations.parquet`` (rows whose status is ok)."""
    root = _root(root)
    path = f"{root.subset_rel(subset)}/annotations.parquet"
    if not root.exists(path):
        known = ", ".join(n for n in root.subset_names() if root.exists(f"{root.subset_rel(n)}/annotations.parquet"))
        raise CurateError(f"Subset {subset!r} is not published (no {root.url(path)}). Published subsets: "
                          f"{known or 'none'}. Run `curate publish --root {root} --subset {subset}` first.")
    t = root.read_parquet(path)
    t = t.select([c for c in ("clip_id", "status") if c in t.column_names])
    if "status" in t.column_names:
        t = t.filter(pc.fill_null(pc.equal(t["status"], "ok"), False))
    return pc.unique(t["clip_id"].combine_chunks().cast(pa.string()))


def _order(ids: Sequence[str], scores: np.ndarray) -> np.ndarray:
    """Indices sorting by score descending, then clip id ascending."""
    return np.lexsort((np.asarray(ids, dtype=object).astype(str), -np.asarray(scores, dtype=np.float64)))


def exact_topk(root: Root | str, name: str, query_vector: np.ndarray, k: int = 10, *,
               allowed: pa.Array | None = None, batch_rows: int | None = None) -> tuple[list[str], np.ndarray]:
    """The k best clips by exact similarity (the set's, :meth:`EmbeddingSet.query_scores`; score desc, clip id
    asc), streaming the vectors with a running top-k."""
    es = embedding_set(_root(root), name)
    q = np.asarray(query_vector, np.float32).ravel()
    if q.size != es.dim:
        raise CurateError(f"query vector has {q.size} dims, embeddings/{name} have {es.dim}.")
    best_ids: list[str] = []
    best = np.zeros(0, np.float32)
    for ids, vecs, _ in es.vectors(allowed, batch_rows=batch_rows):
        s = np.asarray(es.query_scores(vecs, q), np.float32)
        if s.size > k:
            kth = np.partition(s, s.size - k)[s.size - k]
            idx = np.nonzero(s >= kth)[0]  # ties at the boundary all stay: the clip-id tie-break decides below
        else:
            idx = np.arange(s.size)
        cand_ids = best_ids + ids.take(pa.array(idx)).to_pylist()
        cand = np.concatenate([best, s[idx]])
        o = _order(cand_ids, cand)[:k]
        best_ids = [cand_ids[i] for i in o]
        best = cand[o]
    return best_ids, best


# ----------------------------------------------------------------------------- the faiss index
def faiss_available() -> bool:
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
    o = _order(ids, scores)[:k]
    return [ids[i] for i in o], scores[o]


# ----------------------------------------------------------------------------- the query
def embed_query(root: Root | str, name: str, text: str, *, device: str = "auto") -> np.ndarray:
    """Embed ``text`` with the encoder and options recorded in ``embeddings/<name>/_meta.json`` -> ``[D]``
    (the encoder is cached in the process: :meth:`curate.embeddings.EmbeddingSet.embed_query`)."""
    return embedding_set(_root(root), name).embed_query(text, device=device)


def describe_clips(root: Root, clip_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """clip id -> source id, url, title, start/end seconds and frames, caption, media path, fps."""
    import pyarrow.dataset as pads

    if not clip_ids:
        return {}
    c = root.clips.read_arrow(columns=["clip_id", "source_id", "start_s", "end_s", "start_frame", "end_frame",
                                       "caption"], filter=pads.field("clip_id").isin(list(clip_ids)))
    srcs = pc.unique(c["source_id"]).to_pylist() if c.num_rows else []
    s = root.sources.read_arrow(columns=["source_id", "url", "title", "media_path", "fps"],
                                filter=pads.field("source_id").isin(srcs)) if srcs else None
    by_src = {r["source_id"]: r for r in s.to_pylist()} if s is not None else {}
    out = {}
    for r in c.to_pylist():
        src = by_src.get(r["source_id"], {})
        out[r["clip_id"]] = {**r, "url": src.get("url"), "title": src.get("title"),
                             "media_path": src.get("media_path"), "fps": src.get("fps")}
    return out


PUBLIC_FIELDS = ("rank", "clip_id", "score", "source_id", "url", "start_s", "end_s", "caption")


def search(root: Root | str, query: str | None, name: str, *, k: int = 10, subset: str | None = None,
           method: str = "auto", device: str = "auto", nprobe: int = DEFAULT_NPROBE,
           index_threshold: int = DEFAULT_INDEX_THRESHOLD, rebuild_index: bool = False,
           query_vector: np.ndarray | None = None, caption: str | None = None, log: Log | None = None) -> dict[str, Any]:
    """Rank the clips of ``embeddings/<name>`` (restricted to a published ``subset``) against ``query``.

    ``method``: ``auto`` (index above ``index_threshold`` candidate clips when faiss is installed,
    exact below), ``exact`` or ``index`` (built first when missing or stale; exact with a warning
    when faiss is not installed). ``query_vector`` skips the text encoder (benchmarks, tests).
    ``caption`` (``source`` or ``captions:NAME``) is the caption the results show; by default the one the
    set's text embeddings embed. Returns a JSON-ready dict: query, embeddings, encoder, subset, k, method,
    candidates, seconds, warnings, caption_source, results (rank, clip_id, score, source_id, url, start_s,
    end_s, caption; plus source_caption when the caption is a generated one).
    """
    root = _root(root)
    log = log or (lambda m: None)
    t0 = time.perf_counter()
    if method not in ("auto", "exact", "index"):
        raise CurateError(f"method must be auto, exact or index (got {method!r}).")
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise CurateError(f"k must be an integer from 1 to {MAX_K} (got {k!r}).")
    if query_vector is None and (not isinstance(query, str) or not query.strip()):
        raise CurateError("The query is empty: pass the text to search for.")
    if query is not None and len(query) > MAX_QUERY_CHARS:
        raise CurateError(f"The query is longer than {MAX_QUERY_CHARS} characters.")
    es = embedding_set(root, name)
    cap = _shown_caption(root, name, caption)
    warnings: list[str] = []
    if es.meta.get("weights") == "random" and query_vector is None:
        warnings.append(f"embeddings/{name} were made with random weights: the query is embedded by a newly "
                        "initialised model, so scores mean nothing (pipeline test only).")
    allowed = published_clip_ids(root, subset) if subset is not None else None
    candidates = len(allowed) if allowed is not None else es.count()
    use_index = method == "index" or (method == "auto" and candidates > index_threshold)
    if use_index and es.encoder_similarity:
        warnings.append(f"embeddings/{name} score with the {es.encoder} encoder's own similarity, which an inner-"
                        f"product index cannot rank by: exact search over {candidates} clips instead of the index.")
        use_index = False
    if use_index and not faiss_available():
        warnings.append(f"faiss is not installed ({FAISS_HINT}): exact search over {candidates} clips instead "
                        "of the index.")
        use_index = False
    qv = np.asarray(query_vector, np.float32).ravel() if query_vector is not None else \
        embed_query(root, name, query, device=device)
    t_embed = time.perf_counter() - t0
    used = "exact"
    if use_index:
        loaded = None if rebuild_index else load_index(root, name)
        if loaded is None:
            st = index_status(root, name)
            log(f"{'rebuilding' if st['exists'] else 'building'} the index of embeddings/{name}"
                f"{' (embeddings changed since it was built)' if st['exists'] and not st['fresh'] else ''} ...")
            try:
                build_index(root, name, log=log)
                loaded = load_index(root, name)
            except CurateError as e:  # another process is building it, or the table changed meanwhile
                if method == "index":
                    raise
                warnings.append(f"index unavailable ({e}); exact search instead.")
        if loaded is not None:
            ids, scores = index_topk(loaded, qv, k, allowed=allowed, nprobe=nprobe)
            used = "index"
    if used == "exact":
        ids, scores = exact_topk(root, name, qv, k, allowed=allowed)
    info = describe_clips(root, ids)
    generated = caption_texts(root, cap, ids) if cap is not None and ids else {}
    results = []
    for rank, (cid, s) in enumerate(zip(ids, scores.tolist()), start=1):
        c = info.get(cid, {})
        results.append({"rank": rank, "clip_id": cid, "score": float(s), "source_id": c.get("source_id"),
                        "url": c.get("url"), "start_s": c.get("start_s"), "end_s": c.get("end_s"),
                        "caption": generated.get(cid) if cap is not None else c.get("caption"),
                        **({"source_caption": c.get("caption")} if cap is not None else {})})
    return {"query": query, "embeddings": name, "encoder": es.meta.get("encoder"), "subset": subset, "k": k,
            "method": used, "candidates": candidates, "seconds": round(time.perf_counter() - t0, 4),
            "embed_seconds": round(t_embed, 4), "warnings": warnings, "caption_source": caption_source_label(cap),
            "results": results}


def _shown_caption(root: Root, name: str, caption: str | None) -> str | None:
    """The captions set whose texts search results show (None: the source list's caption)."""
    cap = embedding_set(root, name).caption if caption is None else parse_caption_source(caption)
    if cap is not None:
        require_captions(root, cap)
    return cap


def search_subset(root: Root | str, subset: str, query: str, encoder: str, k: int = 10, *,
                  device: str = "auto") -> list[dict]:
    """Search the published clips of ``subset`` for ``query`` with the embedding set ``encoder``.

    For the Airflow plugin page: returns JSON-ready dicts ``{rank, clip_id, score, source_id, url,
    start_s, end_s, caption}``, best first. Raises :class:`curate.errors.CurateError` (a message for
    the user; answer HTTP 400) for an unknown subset or embedding set, an empty or too long query,
    or ``k`` outside 1..1000. The encoder and a loaded index are cached in the process, so only the
    first call pays for loading them.
    """
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise CurateError(f"k must be an integer from 1 to {MAX_K} (got {k!r}).") from None
    return search(root, query, encoder, k=k, subset=subset, device=device)["results"]
