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
    """``<name>_sim``: cosine of clip and caption embeddings (max over queries for query stacks)."""

    name = "alignment"
    scope = "root"  # reads stored embeddings (no model): once, over every embedding set

    def __init__(self, encoder: str | None = None) -> None:
        self.encoder = encoder

    def names(self, root: Root) -> list[str]:
        return [self.encoder] if self.encoder else root.embedding_names()

    def columns(self, root: Root) -> list[str]:
        return [c for n in self.names(root) for c in (f"{n}_sim", f"{n}_sim_error")]

    def compute(self, root: Root, clip_ids: pa.Array) -> pa.Table:
        out = pa.table({"clip_id": clip_ids})
        for name in self.names(root):
            sims, errs = self._scores(root, name, clip_ids)
            ids = clip_ids.to_pylist()
            self._no_caption_reasons(root, name, ids, sims, errs)
            out = out.append_column(f"{name}_sim", pa.array([sims.get(i) for i in ids], pa.float64()))
            out = out.append_column(f"{name}_sim_error", pa.array(
                [errs.get(i) if i not in sims else None for i in ids], pa.string()))
        return out

    @staticmethod
    def _no_caption_reasons(root: Root, name: str, ids: list[str], sims: dict, errs: dict) -> None:
        """A set of generated-caption embeddings has no row for a clip without an ok generated caption: say so."""
        from curate.stages.caption import caption_errors
        from curate.stages.embed import caption_source

        cap = caption_source(root, name)
        missing = [i for i in ids if i not in sims and i not in errs] if cap is not None else []
        if not missing:
            return
        why = caption_errors(root, cap, missing)
        for i in missing:
            errs[i] = (f"no caption in captions/{cap}: {why[i]}" if i in why
                       else f"no caption in captions/{cap} yet (run `curate caption`, then `curate embed --caption`)")

    @staticmethod
    def _scores(root: Root, name: str, clip_ids: pa.Array) -> tuple[dict[str, float], dict[str, str]]:
        """Similarities and reasons, streaming the embeddings in batches: memory holds one batch of vectors
        (plus a float per clip), not the table (10 M clips x 512 floats would be 20 GB)."""
        shape = root.embedding_meta(name).get("video_emb_shape") or [None]
        per_clip = [-1] if len(shape) < 2 else shape  # [Q, D] query stacks keep their shape
        table = root.embeddings(name)
        wanted = pc.field("clip_id").isin(clip_ids)
        sims: dict[str, float] = {}
        errs: dict[str, str] = {}
        for batch in table.iter_batches(columns=["clip_id", "video_emb", "text_emb", "status", "error"],
                                        filter=wanted, batch_size=8192):
            b = pa.Table.from_batches([batch])
            ok = b.filter(pc.and_(pc.equal(b["status"], "ok"), pc.is_valid(b["text_emb"])))
            if ok.num_rows:
                v = np.asarray(ok["video_emb"].combine_chunks().flatten(), np.float32).reshape(ok.num_rows, *per_clip)
                t = np.asarray(ok["text_emb"].combine_chunks().flatten(), np.float32).reshape(ok.num_rows, -1)
                sim = np.einsum("bqd,bd->bq", v, t).max(1) if v.ndim == 3 else np.einsum("bd,bd->b", v, t)
                sims.update(zip(ok["clip_id"].to_pylist(), sim.astype(float).tolist()))
            for cid, st, err, no_text in zip(b["clip_id"].to_pylist(), b["status"].to_pylist(), b["error"].to_pylist(),
                                             b["text_emb"].is_null().to_pylist()):
                if st != "ok":
                    errs[cid] = f"clip not embedded: {err}"
                elif no_text:
                    errs[cid] = err or "clip has no caption"
                else:
                    errs.pop(cid, None)  # a newer part's ok row replaces an older error
        return sims, errs
