"""Scorers compute columns of the ``scores`` table; every filter is a threshold over stored columns.

A scorer gets the root and the clip ids that lack its columns, and returns an Arrow table with
``clip_id`` and its columns (null where it could not score, with the reason in an ``<column>_error``
column). Built-ins: ``alignment`` (``<encoder>_sim`` for every embedding set) and ``technical``
(duration, resolution, aspect ratio, fps); in their own modules ``aesthetic`` (LAION predictor over
CLIP ViT-L/14 frames), ``motion`` (optical-flow magnitude) and ``dedup`` (near-duplicates by
embedding cosine across the whole root).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.captions import caption_errors
from curate.embeddings import EmbeddingSet, score_column, sets
from curate.store import Root


class Scorer:
    name: ClassVar[str] = "scorer"
    #: True for scorers that look at pixels: the score stage passes them only clips they have not scored yet
    incremental: ClassVar[bool] = False
    #: "clip": each clip is scored from its own pixels/rows, so the scorer runs per batch of sources (mapped
    #: Airflow tasks on the GPU workers, ``curate score --shard i/n``); "root": it needs the whole root
    #: (dedup, alignment over every embedding set) and runs once, after the batches. None: "clip" when
    #: ``incremental``, else "root" (see :func:`curate.stages.score.scope_of`).
    scope: ClassVar[str | None] = None

    def columns(self, root: Root) -> list[str]:
        """The columns this scorer writes on this root."""
        raise NotImplementedError

    def compute(self, root: Root, clip_ids: pa.Array) -> pa.Table:
        raise NotImplementedError


class TechnicalScorer(Scorer):
    name = "technical"
    scope = "root"  # a join of two tables: cheap, once

    def columns(self, root: Root) -> list[str]:
        return ["source_id", "duration_s", "width", "height", "aspect", "fps"]

    def compute(self, root: Root, clip_ids: pa.Array) -> pa.Table:
        clips = root.clips.read_arrow(columns=["clip_id", "source_id", "duration_s"])
        clips = clips.filter(pc.is_in(clips["clip_id"], value_set=clip_ids))
        src = root.sources.read_arrow(columns=["source_id", "width", "height", "fps"])
        t = clips.join(src, "source_id", join_type="left outer")
        aspect = pc.divide(pc.cast(t["width"], pa.float64()), pc.cast(t["height"], pa.float64()))
        return t.append_column("aspect", aspect).select(["clip_id", *self.columns(root)])


class AlignmentScorer(Scorer):
    """``<name>_sim``: the embedding set's similarity of clip and caption embeddings (cosine, max over queries for
    query stacks, or the encoder's own ``similarity``: :meth:`curate.embeddings.EmbeddingSet.similarity`)."""

    name = "alignment"
    scope = "root"  # reads stored embeddings (no model unless the encoder has its own similarity): once

    def __init__(self, encoder: str | None = None) -> None:
        self.encoder = encoder

    def names(self, root: Root) -> list[str]:
        return [self.encoder] if self.encoder else sets(root)

    def columns(self, root: Root) -> list[str]:
        return [c for n in self.names(root) for c in (score_column(n), f"{score_column(n)}_error")]

    def compute(self, root: Root, clip_ids: pa.Array) -> pa.Table:
        out = pa.table({"clip_id": clip_ids})
        for name in self.names(root):
            es = EmbeddingSet(root, name)
            sims, errs = self._scores(es, clip_ids)
            ids = clip_ids.to_pylist()
            self._no_caption_reasons(es, ids, sims, errs)
            out = out.append_column(es.score_column, pa.array([sims.get(i) for i in ids], pa.float64()))
            out = out.append_column(f"{es.score_column}_error", pa.array(
                [errs.get(i) if i not in sims else None for i in ids], pa.string()))
        return out

    @staticmethod
    def _no_caption_reasons(es, ids: list[str], sims: dict, errs: dict) -> None:
        """A set of generated-caption embeddings has no row for a clip without an ok generated caption: say so."""
        cap = es.caption
        missing = [i for i in ids if i not in sims and i not in errs] if cap is not None else []
        if not missing:
            return
        why = caption_errors(es.root, cap, missing)
        for i in missing:
            errs[i] = (f"no caption in captions/{cap}: {why[i]}" if i in why
                       else f"no caption in captions/{cap} yet (run `curate caption`, then `curate embed --caption`)")

    @staticmethod
    def _scores(es, clip_ids: pa.Array) -> tuple[dict[str, float], dict[str, str]]:
        """Similarities and reasons, streaming the embeddings in batches: memory holds one batch of vectors
        (plus a float per clip), not the table (10 M clips x 512 floats would be 20 GB)."""
        sims: dict[str, float] = {}
        for ids, video, text in es.vectors(clip_ids, columns=("video", "text"), batch_rows=8192):
            sim = np.asarray(es.similarity(video, text), np.float64)
            sims.update(zip(ids.to_pylist(), sim.tolist()))
        missing = [c for c in clip_ids.to_pylist() if c not in sims]
        return sims, es.missing_reasons(missing) if missing else {}
