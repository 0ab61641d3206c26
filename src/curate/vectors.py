"""Vector math shared by every floor: the cosine of unit vectors, pairwise and as a matrix, and the ranking order.

A leaf (numpy only): the encoders' default similarity, the embedding sets and the queries all use it, so it
sits below all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["cosine", "cosine_matrix", "order_by_score"]


def cosine(video: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Pairs ``[B, D]`` (or ``[B, Q, D]``) x ``[B, D]`` -> ``[B]``: dot products of unit vectors, the best
    query's for query stacks (BLIP-2 ITC)."""
    video = np.asarray(video, dtype=np.float32)
    text = np.asarray(text, dtype=np.float32)
    if video.ndim == 3:
        return np.einsum("bqd,bd->bq", video, text).max(axis=1)
    return np.einsum("bd,bd->b", video, text)


def cosine_matrix(text: np.ndarray, video: np.ndarray) -> np.ndarray:
    """``[M, D]`` captions x ``[N, D]`` (or ``[N, Q, D]``) clips -> ``[M, N]`` (max over queries for stacks)."""
    text = np.asarray(text, dtype=np.float32)
    video = np.asarray(video, dtype=np.float32)
    if video.ndim == 3:
        n, q, d = video.shape
        return (text @ video.reshape(n * q, d).T).reshape(len(text), n, q).max(axis=2)
    return text @ video.T


def order_by_score(ids: Sequence[str], scores: np.ndarray) -> np.ndarray:
    """Indices sorting by score descending, then id ascending (every search path returns the same order)."""
    return np.lexsort((np.asarray(ids, dtype=object).astype(str), -np.asarray(scores, dtype=np.float64)))
