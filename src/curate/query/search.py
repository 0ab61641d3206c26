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
* index: a faiss IVF index stored under ``ROOT/index/<name>/`` and rebuilt when the embeddings change
  (:mod:`curate.query.index`).

``search`` picks the index above ``index_threshold`` candidate clips (when faiss is installed) and
exact search below it. ``search_subset`` is the entry point for the Airflow plugin page.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.captions import caption_texts, require_captions
from curate.errors import CurateError

# the faiss index is curate.query.index's; its names stay importable from here (`search.build_index`)
from curate.query.index import (
    DEFAULT_NPROBE,
    FAISS_HINT,
    build_index,
    embedding_set,
    faiss_available,
    index_status,
    index_topk,
    load_index,
)
from curate.store import Root
from curate.store.names import caption_source_label, parse_caption_source
from curate.vectors import order_by_score

__all__ = [
    "DEFAULT_INDEX_THRESHOLD",
    "embed_query",
    "exact_topk",
    "published_clip_ids",
    "search",
    "search_subset",
]

#: above this many candidate clips ``method="auto"`` uses the index (when faiss is installed)
DEFAULT_INDEX_THRESHOLD = 100_000
MAX_K = 1000
MAX_QUERY_CHARS = 1000

Log = Callable[[str], None]


def _root(root: Root | str | os.PathLike) -> Root:
    return root if isinstance(root, Root) else Root(root)


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
        o = order_by_score(cand_ids, cand)[:k]
        best_ids = [cand_ids[i] for i in o]
        best = cand[o]
    return best_ids, best


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
