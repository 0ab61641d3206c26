"""Embedding sets: what every reader of ``ROOT/embeddings/<name>/`` goes through.

An embedding set is a table (``clip_id``, ``video_emb``, ``text_emb``, ``status``, ``error``; one row per
clip) and its ``_meta.json`` (encoder, options, caption source, shapes), written by `curate embed` /
`curate process`. :class:`EmbeddingSet` owns, in one place:

* its metadata and shape (``meta``, validated; ``video_shape`` ``(D,)`` or ``(Q, D)`` for query stacks,
  ``text_shape`` ``(D,)``);
* streaming its vectors for a set of clips (:meth:`EmbeddingSet.vectors`: bounded batches read through the
  store's table);
* its similarity (:meth:`EmbeddingSet.similarity`): the encoder's own ``similarity`` when its class overrides
  :meth:`curate.encoders.base.Encoder.similarity` (recorded at embed time as ``encoder_similarity`` in
  ``_meta.json``; the encoder is then created through its plugin factory, lazily, once per process), else the
  dot product of the stored vectors (L2-normalised by the encoder contract: their cosine; the best query's
  for ``[Q, D]`` stacks);
* the name of its score column (``<name>_sim``). A name whose score column is a column a registered scorer
  declares (``dup`` -> the dedup scorer's ``dup_sim``) is refused.

It lives beside the store rather than in it: the store knows tables, this module also knows plugins
(encoder factories, the scorers' declared columns).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.encoders import cached_encoder, encoder_lock
from curate.errors import CurateError
from curate.plugins import get_scorers
from curate.store import Root
from curate.store.names import parse_caption_source
from curate.vectors import cosine, cosine_matrix

__all__ = [
    "BATCH_FLOATS",
    "SCORE_SUFFIX",
    "EmbeddingSet",
    "VectorBatch",
    "caption_source",
    "check_set_name",
    "embedding_sets_for_caption",
    "name_from_column",
    "names_from_columns",
    "reserved_columns",
    "score_column",
    "sets",
]

SCORE_SUFFIX = "_sim"
#: floats per streamed batch (64 MB of float32)
BATCH_FLOATS = 1 << 24
#: vector batches Lance decodes ahead of the reader (its default keeps about 1 GB in flight; measured on 1M 512-d
#: float32 rows: peak 1.09 GiB / 3.2 s with the default, 0.68 GiB / 1.9 s with 2)
VECTOR_READAHEAD = 2
COLUMNS = {"video": "video_emb", "text": "text_emb"}


# ----------------------------------------------------------------------------- names and score columns
def score_column(name: str) -> str:
    """The alignment score column of the embedding set ``name``: ``<name>_sim``."""
    return f"{name}{SCORE_SUFFIX}"


def reserved_columns() -> dict[str, str]:
    """Column -> scorer for the fixed columns registered scorers declare (the registry lists them without
    loading any model); templates such as the alignment scorer's ``<encoder>_sim`` are not fixed columns."""
    return {c: s.name for s in get_scorers().values() for c in s.columns if "<" not in c}


def name_from_column(col: str, reserved: Iterable[str] | None = None) -> str | None:
    """The embedding set whose score column ``col`` is (``clip_sim`` -> ``clip``), None for any other column
    (``dup_sim`` is the dedup scorer's)."""
    reserved = reserved_columns() if reserved is None else reserved
    if col.endswith(SCORE_SUFFIX) and len(col) > len(SCORE_SUFFIX) and col not in reserved:
        return col[: -len(SCORE_SUFFIX)]
    return None


def names_from_columns(columns: Iterable[str]) -> list[str]:
    """Embedding sets with a score column among ``columns``, in their order."""
    reserved = reserved_columns()
    return [n for n in (name_from_column(c, reserved) for c in columns) if n is not None]


def check_set_name(name: str) -> str:
    """``name`` when it can name an embedding set: its score column must not be a scorer's column."""
    col = score_column(name)
    owner = reserved_columns().get(col)
    if owner is not None:
        raise CurateError(f"An embedding set cannot be named {name!r}: its score column {col!r} is the "
                          f"{owner} scorer's column. Pass --name with another name (for example {name}_emb).")
    return name


def sets(root: Root | str) -> list[str]:
    """Names of the embedding sets under ``root`` (those with a ``_meta.json`` or a table)."""
    return _root(root).embedding_names()


def caption_source(root: Root, name: str) -> str | None:
    """The captions set whose texts are the ``text_emb`` of ``embeddings/<name>`` (None: the clips table's
    caption, from the source list); recorded in its ``_meta.json`` by ``curate embed --caption``."""
    return parse_caption_source(root.embedding_meta(name).get("caption"))


def embedding_sets_for_caption(root: Root, caption: str | None) -> list[str]:
    """Embedding sets whose ``text_emb`` embeds the caption source ``caption`` (``source`` / ``captions:NAME``)."""
    want = parse_caption_source(caption)
    return [n for n in root.embedding_names() if caption_source(root, n) == want]


def _root(root: Root | str) -> Root:
    return root if isinstance(root, Root) else Root(root)


# ----------------------------------------------------------------------------- the set
class VectorBatch(NamedTuple):
    """One streamed batch: clip ids and their vectors (None for a column not asked for)."""

    clip_ids: pa.Array
    video: np.ndarray | None  # [n, D] or [n, Q, D] float32
    text: np.ndarray | None  # [n, D] float32


class EmbeddingSet:
    """``ROOT/embeddings/<name>``: metadata, vectors, similarity and score column of one embedding set."""

    def __init__(self, root: Root | str, name: str) -> None:
        self.root = _root(root)
        self.name = check_set_name(name)
        self._meta: dict | None = None

    def __repr__(self) -> str:
        return f"EmbeddingSet({str(self.root)!r}, {self.name!r})"

    # -- metadata
    def exists(self) -> bool:
        return bool(self.root.embedding_meta(self.name))

    @property
    def meta(self) -> dict:
        """``_meta.json``, checked: the set exists and its ``video_emb_shape`` is ``[D]`` or ``[Q, D]``."""
        if self._meta is None:
            meta = self.root.embedding_meta(self.name)
            if not meta:
                known = ", ".join(sets(self.root)) or "none"
                raise CurateError(f"No embedding set named {self.name!r} under {self.root}/embeddings (found: "
                                  f"{known}). Run `curate embed --root {self.root} --encoder ...` first; --encoder "
                                  "(or --name) names the set.")
            try:
                shape = [int(x) for x in meta.get("video_emb_shape") or []]
            except (TypeError, ValueError):
                shape = []
            if len(shape) not in (1, 2) or min(shape) <= 0:
                raise CurateError(f"embeddings/{self.name}/_meta.json has no usable video_emb_shape "
                                  f"({meta.get('video_emb_shape')}): embed the set again (delete "
                                  f"{self.root.url('embeddings/' + self.name)} first).")
            self._meta = meta
        return self._meta

    @property
    def encoder(self) -> str | None:
        return self.meta.get("encoder")

    @property
    def options(self) -> dict[str, str]:
        return {k: str(v) for k, v in (self.meta.get("options") or {}).items()}

    @property
    def caption(self) -> str | None:
        """The captions set whose texts are the ``text_emb`` (None: the clips table's caption)."""
        return parse_caption_source(self.meta.get("caption"))

    @property
    def video_shape(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.meta["video_emb_shape"])

    @property
    def dim(self) -> int:
        return self.video_shape[-1]

    @property
    def text_shape(self) -> tuple[int]:
        return (self.dim,)

    @property
    def queries(self) -> int:
        """Vectors per clip: Q for ``[Q, D]`` query stacks, else 1."""
        return self.video_shape[0] if len(self.video_shape) == 2 else 1

    @property
    def stacked(self) -> bool:
        return len(self.video_shape) == 2

    @property
    def score_column(self) -> str:
        return score_column(self.name)

    @property
    def table(self):
        return self.root.embeddings(self.name)

    def count(self) -> int:
        """Rows of the table (error rows included)."""
        return self.table.count()

    # -- vectors
    def vectors(self, clip_ids: Sequence[str] | pa.Array | pa.ChunkedArray | None = None,
                columns: Sequence[str] = ("video",), batch_rows: int | None = None) -> Iterator[VectorBatch]:
        """Stream the ok rows (of ``clip_ids`` when given) whose ``columns`` (``video``, ``text``) all hold a
        vector, in table order, in batches of ``batch_rows`` (default: about 64 MB of floats)."""
        cols = tuple(columns)
        unknown = [c for c in cols if c not in COLUMNS]
        if unknown:
            raise CurateError(f"vectors(columns=...) takes video and text, not {', '.join(unknown)}.")
        width = {"video": self.queries * self.dim, "text": self.dim}
        rows = batch_rows or max(64, BATCH_FLOATS // max(1, sum(width[c] for c in cols)))
        keys = self._ids(clip_ids)
        if keys is not None and not len(keys):
            return
        # the clip ids are matched by the table (in the scan, or by position when many), the status here (a scan
        # filter on it reads the table ~10% slower)
        for b in self.table.iter_batches(columns=["clip_id", "status", *(COLUMNS[c] for c in cols)], keys=keys,
                                         batch_size=rows, readahead=VECTOR_READAHEAD):
            keep = pc.fill_null(pc.equal(b.column("status"), "ok"), False)
            for c in cols:
                keep = pc.and_(keep, pc.is_valid(b.column(COLUMNS[c])))
            if not pc.any(keep).as_py():
                continue
            if not pc.all(keep).as_py():
                b = b.filter(keep)
            out = {c: self._array(b.column(COLUMNS[c]), b.num_rows, c) for c in cols}
            yield VectorBatch(b.column("clip_id"), out.get("video"), out.get("text"))

    def _array(self, col: pa.Array, n: int, which: str) -> np.ndarray:
        vals = col.flatten().to_numpy(zero_copy_only=False)
        shape = self.video_shape if which == "video" else self.text_shape
        if vals.size != n * int(np.prod(shape)):
            raise CurateError(f"embeddings/{self.name}: {which} vectors do not have the {int(np.prod(shape))} values "
                              f"of their shape {list(shape)} in _meta.json; embed the set again.")
        return vals.astype(np.float32, copy=False).reshape(n, *shape)

    def clip_ids(self, clip_ids: Sequence[str] | pa.Array | pa.ChunkedArray | None = None) -> pa.Array:
        """Ids of the ok rows (among ``clip_ids`` when given), without reading any vector."""
        parts = [b.column("clip_id") for b in self._rows(["clip_id"], clip_ids, ok=True)]
        return pa.concat_arrays(parts) if parts else pa.array([], pa.string())

    def missing_reasons(self, clip_ids: Sequence[str] | pa.Array | pa.ChunkedArray) -> dict[str, str]:
        """Why rows of ``clip_ids`` have no clip-caption pair: an error row (``clip not embedded: ...``) or an
        ok row without a caption vector. Clips without a row are left out."""
        out: dict[str, str] = {}
        for b in self._rows(["clip_id", "status", "error", "text_emb"], clip_ids, ok=False):
            no_text = pc.is_null(b.column("text_emb")).to_pylist()
            for cid, st, err, nt in zip(b.column("clip_id").to_pylist(), b.column("status").to_pylist(),
                                        b.column("error").to_pylist(), no_text):
                if st != "ok":
                    out[cid] = f"clip not embedded: {err}"
                elif nt:
                    out[cid] = err or "clip has no caption"
        return out

    def _rows(self, columns: list[str], clip_ids, *, ok: bool) -> Iterator[pa.RecordBatch]:
        keys = self._ids(clip_ids)
        if keys is not None and not len(keys):
            return
        flt = (pc.field("status") == "ok") if ok else None
        for b in self.table.iter_batches(columns=columns, filter=flt, keys=keys, batch_size=65536):
            if b.num_rows:
                yield b

    @staticmethod
    def _ids(clip_ids) -> pa.Array | None:
        """``clip_ids`` as one string array (None: every row)."""
        return None if clip_ids is None else _string_array(clip_ids)

    # -- similarity
    @property
    def encoder_similarity(self) -> bool:
        """True when the encoder's class overrides ``Encoder.similarity`` (recorded by `curate embed`)."""
        return bool(self.meta.get("encoder_similarity"))

    def encoder_instance(self, device: str = "auto"):
        """The set's encoder (same plugin, same options), created once per process."""
        if not self.encoder:
            raise CurateError(f"embeddings/{self.name}/_meta.json names no encoder.")
        return cached_encoder(self.encoder, self.options, device)

    def similarity(self, video: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Alignment score ``[B]`` of pairs (row i of ``video`` ``[B, *video_shape]`` with row i of ``text``
        ``[B, D]``): the encoder's ``similarity`` when it overrides it, else :func:`cosine`."""
        if self.encoder_similarity:
            with encoder_lock:
                enc = self.encoder_instance("cpu")
                s = enc.similarity(np.asarray(video, np.float32), np.asarray(text, np.float32))
            return np.asarray(s, np.float32).reshape(len(video))
        return cosine(video, text)

    def query_scores(self, video: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Scores ``[N]`` of ``N`` clips against one text vector ``query`` ``[D]`` (search)."""
        q = np.asarray(query, np.float32).ravel()
        video = np.asarray(video, np.float32)
        if self.encoder_similarity:
            return self.similarity(video, np.broadcast_to(q, (len(video), q.size)))
        if video.ndim == 3:
            n, k, d = video.shape
            return (video.reshape(n * k, d) @ q).reshape(n, k).max(axis=1)
        return video @ q

    def score_matrix(self, text: np.ndarray, video: np.ndarray) -> np.ndarray:
        """``[M, D]`` captions x ``[N, ...]`` clips -> ``[M, N]`` (retrieval metrics)."""
        if not self.encoder_similarity:
            return cosine_matrix(text, video)
        text = np.asarray(text, np.float32)
        video = np.asarray(video, np.float32)
        if not len(text):
            return np.zeros((0, len(video)), np.float32)
        return np.stack([self.query_scores(video, t) for t in text])

    def embed_query(self, text: str, *, device: str = "auto") -> np.ndarray:
        """``text`` embedded by the set's encoder and options -> unit ``[D]``."""
        with encoder_lock:
            v = np.asarray(self.encoder_instance(device).embed_texts([text]), np.float32)[0]
        if v.size != self.dim:
            raise CurateError(f"encoder {self.encoder!r} embeds text into {v.size} dims but embeddings/{self.name} "
                              f"have {self.dim}; the options recorded in _meta.json no longer build the same model.")
        return v / max(float(np.linalg.norm(v)), 1e-12)


def _string_array(ids) -> pa.Array:
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        ids = pa.array(list(ids), pa.string())
    return ids.cast(pa.string()) if ids.type != pa.string() else ids
