"""Synthetic embedding sets with planted near-duplicates, written into a root through the store's API (no
video): shared by tests/test_dedup.py and bench/bench_dedup.py."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from curate.store import Root, embedding_schema

SET = "syn"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def near(x: np.ndarray, cos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at exactly cosine ``cos`` from the unit rows ``x`` (a random orthogonal direction)."""
    n = rng.standard_normal(x.shape).astype(np.float64)
    n -= (n * x).sum(1, keepdims=True) * x
    n = unit(n)
    return (cos[:, None] * x + np.sqrt(1 - cos[:, None] ** 2) * n).astype(np.float32)


def make_vectors(n: int, dim: int, *, blobs: int, groups: int, seed: int = 0, spread: float = 1.0,
                 cos_range: tuple[float, float] = (0.96, 0.995)):
    """``n`` unit vectors around ``blobs`` centres (background cosine ~0.5 within a blob, ~0 across), of which
    ``groups`` planted groups of 2-4 near-duplicates (each copy at a cosine in ``cos_range`` to the group's
    first vector). Returns (vectors [n, dim] float32, group id per row, -1 for background)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((blobs, dim)))
    sizes = rng.integers(2, 5, groups)
    planted = int(sizes.sum())
    base_n = n - planted + groups  # each group's first vector is a background-like point
    which = rng.integers(0, blobs, base_n)
    vec = unit(centres[which] + rng.standard_normal((base_n, dim)) * spread / np.sqrt(dim)).astype(np.float32)
    group = np.full(base_n, -1, np.int64)
    heads = rng.choice(base_n, groups, replace=False)
    group[heads] = np.arange(groups)
    extra, eg = [], []
    for g, (h, s) in enumerate(zip(heads, sizes)):
        cos = rng.uniform(*cos_range, s - 1)
        extra.append(near(np.repeat(vec[h][None].astype(np.float64), s - 1, 0), cos, rng))
        eg += [g] * (s - 1)
    vec = np.concatenate([vec, *extra]) if extra else vec
    group = np.concatenate([group, np.array(eg, np.int64)])
    perm = rng.permutation(len(vec))
    return vec[perm], group[perm]


def write_set(root: Root | str, ids: list[str], vecs: np.ndarray, name: str = SET, batch: int = 100_000) -> Root:
    """Append ``vecs`` as the ok rows ``ids`` of embedding set ``name`` (and its ``_meta.json``)."""
    root = root if isinstance(root, Root) else Root(root).ensure()
    dim = vecs.shape[1]
    schema = embedding_schema()
    for a in range(0, len(ids), batch):
        v = np.ascontiguousarray(vecs[a:a + batch], np.float32)
        m = len(v)
        video = pa.ListArray.from_arrays(pa.array(np.arange(0, (m + 1) * dim, dim, dtype=np.int32)),
                                         pa.array(v.ravel()))
        t = pa.table({"clip_id": pa.array(ids[a:a + batch], pa.string()), "video_emb": video,
                      "text_emb": pa.nulls(m, pa.list_(pa.float32())), "status": pa.array(["ok"] * m),
                      "error": pa.nulls(m, pa.string()), "updated_at": pa.array(np.zeros(m))}, schema=schema)
        root.embeddings(name).append(t)
    if not root.embedding_meta(name):
        root.write_embedding_meta(name, {"encoder": "synthetic", "options": {}, "video_emb_shape": [dim]})
    return root


def write_scores(root: Root, ids: list[str], values: np.ndarray, column: str = "quality") -> None:
    """A ranking column in ``ROOT/scores``."""
    root.scores.upsert(pa.table({"clip_id": pa.array(ids, pa.string()), column: pa.array(values, pa.float64())}))


def meta(root: Root, name: str = SET) -> dict:
    return json.loads(root.read_text(f"embeddings/{name}/_meta.json"))
