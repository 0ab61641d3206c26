"""Text<->video retrieval metrics over stored embeddings: R@1, R@5, R@10, MedianR, MeanR.

The numbers are those of CLIP4Clip's ``compute_metrics`` (and the CLIP4Clip model cards): every
query ranks the whole gallery by similarity, ranks are 1-based, R@K is the percentage of queries
whose correct item is ranked K or better, MedianR and MeanR are the median and mean rank.

Ground truth and duplicates. The correct item of a clip is its own caption. Clips split from one
source usually share the source's caption, so one caption may belong to several clips. Captions are
grouped by their exact text (leading/trailing whitespace stripped) and each distinct caption is one
item on the text side:

* text -> video: one query per *distinct* caption, ranked against every clip; it is answered by the
  best-ranked of the clips that carry it (the multi-positive rule CLIP4Clip/X-CLIP use for MSVD and
  VATEX, where a video has many captions; here a caption has many clips).
* video -> text: one query per clip, ranked against the distinct captions; exactly one is correct.

Without duplicates both reduce to the usual one-to-one MSR-VTT evaluation (the diagonal of the
similarity matrix). Score ties: a wrong item whose score is within ``TIE_EPS`` of the best correct
item's score counts as ranked ahead of it (ties go against the query), so an encoder that gives
every clip the same embedding scores at chance level or worse, never R@1 = 100. CLIP4Clip's code
counts only strictly higher scores and is undefined for exact ties; with distinct scores the two
agree exactly.

Similarity is the embedding set's, as in ``curate score`` (:class:`curate.embeddings.EmbeddingSet`):
the cosine of L2-normalised vectors (for encoders with ``[Q, D]`` query stacks the maximum over the Q
queries, BLIP-2 ITC), or the encoder's own ``similarity`` when it overrides it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from curate.captions import caption_texts
from curate.embeddings import EmbeddingSet, embedding_sets_for_caption, sets
from curate.errors import CurateError
from curate.query.search import published_clip_ids
from curate.store import Root
from curate.store.names import caption_source_label
from curate.vectors import cosine_matrix

__all__ = [
    "METRIC_KEYS",
    "TIE_EPS",
    "evaluate",
    "group_captions",
    "load_pairs",
    "markdown_table",
    "metrics",
    "similarity",
    "t2v_ranks",
    "v2t_ranks",
]

TIE_EPS = 1e-6
METRIC_KEYS = ("R1", "R5", "R10", "MedianR", "MeanR")


#: ``[M, D]`` captions x ``[N, D]`` (or ``[N, Q, D]``) clips -> ``[M, N]``
Similarity = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: the cosine matrix (max over queries for stacks): :func:`curate.embeddings.cosine_matrix`
similarity = cosine_matrix


def _block_rows(n_cols: int, q: int, budget: int = 1 << 24) -> int:
    """Rows per block so that one ``[rows, n_cols * q]`` float32 block stays near ``budget`` floats."""
    return max(1, budget // max(1, n_cols * q))


def _rank_inputs(text, video, caption_of_video):
    """float32 text [M, D] and video [N, D] or [N, Q, D], caption index per clip; with M, N and Q."""
    text = np.asarray(text, np.float32)
    video = np.asarray(video, np.float32)
    cap = np.asarray(caption_of_video, dtype=np.int64)
    if cap.shape != (len(video),):
        raise ValueError("caption_of_video needs one caption index per clip")
    return text, video, cap, len(text), len(video), video.shape[1] if video.ndim == 3 else 1


def t2v_ranks(text: np.ndarray, video: np.ndarray, caption_of_video: Sequence[int], *, eps: float = TIE_EPS,
              block: int | None = None, sim: Similarity = cosine_matrix) -> np.ndarray:
    """1-based rank of each caption's best-ranked clip among all clips (see the module docstring)."""
    text, video, cap, m, n, q = _rank_inputs(text, video, caption_of_video)
    if m and np.bincount(cap, minlength=m)[:m].min() == 0:
        raise ValueError("every caption needs at least one clip")
    block = block or _block_rows(n, q)
    out = np.empty(m, dtype=np.int64)
    for a in range(0, m, block):
        b = min(m, a + block)
        s = sim(text[a:b], video)  # [b-a, N]
        gt = cap[None, :] == np.arange(a, b)[:, None]
        best = np.where(gt, s, -np.inf).max(axis=1)
        ahead = ((s >= best[:, None] - eps) & ~gt).sum(axis=1)
        out[a:b] = 1 + ahead
    return out


def v2t_ranks(text: np.ndarray, video: np.ndarray, caption_of_video: Sequence[int], *, eps: float = TIE_EPS,
              block: int | None = None, sim: Similarity = cosine_matrix) -> np.ndarray:
    """1-based rank of each clip's own caption among all distinct captions."""
    text, video, cap, m, n, q = _rank_inputs(text, video, caption_of_video)
    block = block or _block_rows(m, q)
    out = np.empty(n, dtype=np.int64)
    for a in range(0, n, block):
        b = min(n, a + block)
        s = sim(text, video[a:b]).T  # [b-a, M]
        own = cap[a:b]
        gt_score = s[np.arange(b - a), own]
        ahead = (s >= gt_score[:, None] - eps).sum(axis=1) - 1  # minus the correct caption itself
        out[a:b] = 1 + ahead
    return out


def metrics(ranks: Iterable[int]) -> dict[str, float]:
    """R@1/5/10 in percent, MedianR and MeanR of 1-based ranks (CLIP4Clip's definitions)."""
    r = np.asarray(list(ranks) if not isinstance(ranks, np.ndarray) else ranks, dtype=np.float64)
    if r.size == 0:
        return {"R1": float("nan"), "R5": float("nan"), "R10": float("nan"), "MedianR": float("nan"),
                "MeanR": float("nan"), "queries": 0}
    if r.min() < 1:
        raise ValueError("ranks are 1-based")
    return {"R1": float(100.0 * np.mean(r <= 1)), "R5": float(100.0 * np.mean(r <= 5)),
            "R10": float(100.0 * np.mean(r <= 10)), "MedianR": float(np.median(r)), "MeanR": float(np.mean(r)),
            "queries": int(r.size)}


def group_captions(captions: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct captions (stripped, in order of first appearance) and each clip's index into them."""
    index: dict[str, int] = {}
    of = np.empty(len(captions), dtype=np.int64)
    for i, c in enumerate(captions):
        key = c.strip()
        of[i] = index.setdefault(key, len(index))
    return list(index), of


def evaluate_arrays(text_per_clip: np.ndarray, video: np.ndarray, captions: Sequence[str], *,
                    sim: Similarity = cosine_matrix) -> dict[str, Any]:
    """Metrics of one encoder from per-clip caption embeddings, clip embeddings and caption strings.

    The text embedding of a distinct caption is that of its first clip; ``sim`` scores captions x clips.
    """
    unique, of = group_captions(captions)
    first = np.full(len(unique), -1, dtype=np.int64)
    for i in range(len(of) - 1, -1, -1):
        first[of[i]] = i
    text = np.asarray(text_per_clip, np.float32)[first] if len(unique) else np.zeros((0, video.shape[-1]), np.float32)
    return {"clips": len(video), "captions": len(unique),
            "t2v": metrics(t2v_ranks(text, video, of, sim=sim)), "v2t": metrics(v2t_ranks(text, video, of, sim=sim))}


def load_pairs(root, name: str, clip_ids: Iterable[str] | None = None):
    """``(clip_ids, video [N,...], text [N,D])`` of clips with an ok clip embedding and a caption embedding,
    by clip id."""
    es = EmbeddingSet(root, name)
    es.meta  # noqa: B018  (a missing or malformed set is a readable error)
    ids: list[str] = []
    videos: list[np.ndarray] = []
    texts: list[np.ndarray] = []
    for i, v, t in es.vectors(clip_ids if clip_ids is None else list(clip_ids), columns=("video", "text")):
        ids.extend(i.to_pylist())
        videos.append(v)
        texts.append(t)
    order = np.argsort(np.asarray(ids, dtype=object).astype(str), kind="stable") if ids else np.zeros(0, np.int64)
    video = np.concatenate(videos)[order] if videos else np.zeros((0, *es.video_shape), np.float32)
    text = np.concatenate(texts)[order] if texts else np.zeros((0, es.dim), np.float32)
    return [ids[i] for i in order], video, text


def evaluate(root, names: Sequence[str] | None = None, *, subset: str | None = None, max_clips: int | None = None,
             seed: int = 0, caption: str | None = None) -> dict[str, Any]:
    """Text->video and video->text metrics of each embedding set over the same clips.

    Each set is evaluated against the captions its text embeddings embed (the source list's, or the
    generated ``captions:NAME`` of `curate embed --caption`). Clips count when they carry such a caption
    for every named set and have an ok clip embedding and caption embedding in *every* named set (so
    rows compare like with like); ``subset`` restricts them to a published subset; ``max_clips`` draws
    that many of them at random (seeded) before grouping. ``caption`` selects the sets whose text
    embeddings are that caption source (all of them when ``names`` is empty).
    """
    import pyarrow.compute as pc

    root = Root(root) if not isinstance(root, Root) else root
    names = list(names or [])
    if caption is not None:
        matching = embedding_sets_for_caption(root, caption)
        wrong = [n for n in names if n not in matching]
        if wrong:
            raise CurateError(f"embeddings {', '.join(wrong)} do not embed the captions {caption!r} "
                              f"(sets that do: {', '.join(matching) or 'none'}).")
        names = names or matching
        if not names:
            raise CurateError(f"No embedding set has text embeddings of {caption!r}: run `curate embed "
                              f"--caption {caption}` first.")
    names = names or sets(root)
    if not names:
        raise CurateError(f"No embedding sets under {root}/embeddings: run `curate embed` first.")
    es_of = {name: EmbeddingSet(root, name) for name in names}
    sources = {name: es_of[name].caption for name in names}
    clips = root.clips.read_arrow(columns=["clip_id", "caption", "status"])
    clips = clips.filter(pc.fill_null(pc.equal(clips["status"], "ok"), False))
    texts_of: dict[str | None, dict[str, str]] = {}
    for src in dict.fromkeys(sources.values()):
        pairs = zip(clips["clip_id"].to_pylist(), clips["caption"].to_pylist()) if src is None else \
            caption_texts(root, src).items()
        texts_of[src] = {c: s for c, s in pairs if isinstance(s, str) and s.strip()}
    allowed = set(clips["clip_id"].to_pylist())
    for t in texts_of.values():
        allowed &= set(t)
    if subset is not None:
        allowed &= set(published_clip_ids(root, subset).to_pylist())
    loaded = {}
    for name in names:
        ids, video, text = load_pairs(root, name)
        loaded[name] = (ids, video, text)
        allowed &= set(ids)
    common = sorted(allowed)
    if max_clips is not None and 0 < max_clips < len(common):
        rng = np.random.default_rng(seed)
        common = sorted(np.asarray(common, dtype=object)[rng.choice(len(common), max_clips, replace=False)].tolist())
    results = []
    for name in names:
        ids, video, text = loaded[name]
        pos = {c: i for i, c in enumerate(ids)}
        sel = np.asarray([pos[c] for c in common], dtype=np.int64)
        meta = es_of[name].meta
        caption_of = texts_of[sources[name]]
        r = evaluate_arrays(text[sel], video[sel], [caption_of[c] for c in common], sim=es_of[name].score_matrix) \
            if len(sel) else \
            {"clips": 0, "captions": 0, "t2v": metrics([]), "v2t": metrics([])}
        results.append({"encoder": name, "model": meta.get("model"), "weights": meta.get("weights"),
                        "similarity": meta.get("similarity"), "caption": caption_source_label(sources[name]), **r})
    return {"root": str(root), "subset": subset, "clips": len(common), "results": results,
            "ties": f"against the query (eps={TIE_EPS})",
            "duplicates": "one text query per distinct caption, answered by its best-ranked clip"}


def _fmt(key: str, v: float) -> str:
    if np.isnan(v):
        return "-"
    if key in ("R1", "R5", "R10"):
        return f"{v:.2f}"
    return f"{v:.1f}" if key == "MedianR" else f"{v:.4f}"


def markdown_table(evaluation: dict[str, Any]) -> str:
    """The CLIP4Clip model-card table (Model | R1 | R5 | R10 | MedianR | MeanR), text->video and video->text side by side."""
    head = ["Model", "clips", "captions", *[f"t2v {k}" for k in METRIC_KEYS], *[f"v2t {k}" for k in METRIC_KEYS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in evaluation["results"]:
        cells = [r["encoder"], str(r["clips"]), str(r["captions"]),
                 *[_fmt(k, r["t2v"][k]) for k in METRIC_KEYS], *[_fmt(k, r["v2t"][k]) for k in METRIC_KEYS]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_cell(key: str, v: float) -> str:
    return _fmt(key, v)
