"""Embed: run an encoder plugin over every clip (sampled frames -> vector) and its caption (text -> vector).

Sources are decoded once each with decord (only the frames the encoder samples), in worker threads
that run ahead of the model, so decoding overlaps the forward pass. Clips are batched across
sources. Results go to ``ROOT/embeddings/<name>/`` (``name`` defaults to the encoder name; use
another name to keep embeddings of two configurations of one encoder side by side).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

# the imports `X as X` re-export names that moved down a floor, for their old path, until the merge
from curate.captions import caption_texts, require_captions
from curate.embeddings import check_set_name
from curate.encoders import load_encoder, overrides_similarity
from curate.errors import CurateError
from curate.faults import crashpoint
from curate.media.frames import batches, clip_groups, decode_clips
from curate.plugins import get_encoder
from curate.progress import NullProgress, Progress, StageResult
from curate.stages.caption import CaptionsPending, captions_pending
from curate.store import Root, embedding_schema, maintain, rows_to_table
from curate.store.names import caption_source_label, parse_caption_source


def parse_options(pairs: Iterable[str]) -> dict[str, str]:
    """``["model=ViT-B-32", "frames=8"]`` -> dict; a pair without '=' is an invocation error."""
    out = {}
    for p in pairs or ():
        if "=" not in p:
            raise CurateError(f"Option {p!r} is not key=value (example: -o model=ViT-B-32).")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def embedding_meta(encoder_name: str, options: dict, enc, caption: str | None = None) -> dict:
    info = enc.info
    extra = {"caption": caption} if caption else {}
    return {"encoder": encoder_name, "options": options, **extra, "model": info.model, "weights": info.weights,
            "embed_dim": info.embed_dim, "num_frames": info.num_frames, "frame_size": info.frame_size,
            "video_emb_shape": list(info.video_emb_shape),
            "similarity": "max_over_queries" if len(info.video_emb_shape) == 2 else "cosine",
            "encoder_similarity": overrides_similarity(enc),
            "score_range": getattr(enc, "score_range", ""), "extra": info.extra}


def check_meta(root: Root, name: str, encoder: str, options: dict, caption: str | None = None) -> None:
    """A second run into ``embeddings/<name>`` must use the same encoder, options and caption source (and
    ``name`` must be one an embedding set can have)."""
    check_set_name(name)
    meta = root.embedding_meta(name)
    if meta and (meta.get("encoder") != encoder or meta.get("options") != options
                 or meta.get("caption", "source") != (caption or "source")):
        raise CurateError(
            f"embeddings/{name} were made with encoder {meta.get('encoder')!r} options {meta.get('options')} "
            f"caption {meta.get('caption', 'source')!r}; this run asks for {encoder!r} options {options} caption "
            f"{caption or 'source'!r}. Pass --name NAME to keep both side by side, "
            f"or delete {root.url('embeddings/' + name)} to redo them."
        )


def video_donor(root: Root, name: str, encoder: str, options: dict) -> str | None:
    """Another embedding set made with the same encoder and options (so the same clip vectors): a set of
    generated-caption embeddings copies its clip vectors instead of decoding and embedding the clips again."""
    for other in root.embedding_names():
        m = root.embedding_meta(other)
        if other != name and m.get("encoder") == encoder and m.get("options") == options:
            return other
    return None


def embed(root: Root | str, encoder: str = "clip", *, options: dict[str, Any] | None = None, name: str | None = None,
          caption: str | None = None, device: str = "auto", batch_size: int = 32, workers: int = 2,
          clip_ids: Iterable[str] | None = None, source_ids: Iterable[str] | None = None, flush_every: int = 512,
          progress: Progress | None = None, encoder_obj=None) -> StageResult:
    """Embed every ok clip not embedded yet under ``embeddings/<name>``; returns counts.

    ``caption``: which text becomes ``text_emb``: ``"source"`` (default: the clips table's caption) or
    ``"captions:NAME"`` (the captions `curate caption --name NAME` generated; ``name`` then defaults to
    ``<encoder>_<NAME>``). Clips without an ok generated caption are left for a later run; clip vectors
    are copied from a set made with the same encoder and options when there is one.

    ``source_ids`` makes it per-batch work (a mapped Airflow task, ``curate embed --shard i/n``): only those
    sources' clips, no lock on the root (a batch owns its sources' clips: batches never write one row),
    only appends, no table maintenance (:func:`curate.store.maintain` runs once after the batches). Without
    it the run covers the whole root, holds the ``embed-<name>`` lock (a second whole-root run fails
    clearly) and maintains the table at its end. With ``caption="captions:NAME"`` a batch needs its
    captions committed first: a clip of the batch without a row in ``captions/NAME`` (or no such table yet)
    raises :class:`curate.stages.caption.CaptionsPending` before anything is loaded or written (error rows
    count as committed: they get no caption embedding).

    ``encoder_obj``: an encoder already created (:func:`load_encoder`) for ``encoder`` with these
    ``options``: a resident worker loads it once and passes it to every batch.
    """
    root = Root(root) if not isinstance(root, Root) else root
    options = {k: str(v) for k, v in (options or {}).items()}
    cap_name = parse_caption_source(caption)
    cap_label = caption_source_label(cap_name) if cap_name else None
    name = name or (encoder if cap_name is None else f"{encoder}_{cap_name}")
    get_encoder(encoder)  # an unknown name is an invocation error even when there is nothing to embed
    if cap_name is not None and source_ids is None:  # a batch checks its own clips' captions (CaptionsPending)
        require_captions(root, cap_name)
    kw = dict(options=options, name=name, cap_name=cap_name, cap_label=cap_label, device=device,
              batch_size=batch_size, workers=workers, clip_ids=clip_ids, flush_every=flush_every,
              progress=progress or NullProgress(), encoder_obj=encoder_obj)
    if source_ids is not None:  # per-batch: no root lock, appends only
        return _embed(root.ensure(), encoder, source_ids=set(source_ids), **kw)
    with root.ensure().lock(f"embed-{name}"):
        result = _embed(root, encoder, source_ids=None, **kw)
        maintain(root, [f"embeddings/{name}"])
    return result


def _embed(root: Root, encoder: str, *, options: dict[str, str], name: str, cap_name: str | None,
           cap_label: str | None, device: str, batch_size: int, workers: int, clip_ids: Iterable[str] | None,
           source_ids: set[str] | None, flush_every: int, progress: Progress, encoder_obj) -> StageResult:
    result = StageResult("embed", extra={"encoder": encoder, "name": name, **({"caption": cap_label} if cap_name else {})})
    check_meta(root, name, encoder, options, cap_label)
    table = root.embeddings(name)
    mine = ds.field("source_id").isin(pa.array(sorted(source_ids), pa.string())) if source_ids is not None else None
    clips = root.clips.read(columns=["clip_id", "source_id", "start_frame", "end_frame", "caption", "status"],
                            filter=mine)
    clips = clips[clips["status"] == "ok"]
    if clip_ids is not None:
        clips = clips[clips["clip_id"].isin(set(clip_ids))]
    done = embedded_ids(table, clips["clip_id"].tolist() if source_ids is not None else None)
    result.skipped = int(clips["clip_id"].isin(done).sum())
    clips = clips[~clips["clip_id"].isin(done)]
    texts = None
    if cap_name is not None:  # generated captions: only clips that have one (the others wait for it)
        if source_ids is not None:  # a batch's caption embeddings come after its captions, never beside them
            pending = captions_pending(root, cap_name, clips["clip_id"].tolist())
            if pending:
                raise CaptionsPending(
                    f"{len(pending)} of the {len(clips)} clips this batch has left to embed have no row in "
                    f"captions/{cap_name} yet (e.g. {pending[0]}): caption the batch first (`curate caption "
                    f"--name {cap_name} --source-ids FILE`, or wait for its caption task), then embed its captions.")
        texts = caption_texts(root, cap_name, clips["clip_id"].tolist())
        has = clips["clip_id"].isin(texts)
        result.extra["without_caption"] = int((~has).sum())
        clips = clips[has]
    result.total = len(clips)
    if clips.empty:
        return result.done()
    enc = encoder_obj or load_encoder(encoder, options, device)
    if not root.write_embedding_meta(name, embedding_meta(encoder, options, enc, cap_label)):
        check_meta(root, name, encoder, options, cap_label)  # another batch wrote it first: the same configuration?
    result.extra["weights"] = enc.info.weights
    progress.start(len(clips), f"embed ({name})")
    rows: list[dict] = []

    def flush() -> None:
        if rows:
            table.append(rows_to_table(rows, embedding_schema()))
            rows.clear()
            crashpoint("embed-flush")

    todo = clips["clip_id"].tolist()
    donor = video_donor(root, name, encoder, options) if cap_name is not None else None
    if donor is not None:  # same encoder and options: copy the clip vectors, embed only the texts
        copied: set[str] = set()
        for batch in _donor_batches(root, donor, todo, batch_size):
            for r in embed_batch(enc, batch, texts=texts):
                rows.append(r)
                copied.add(r["clip_id"])
                result.ok += r["status"] == "ok"
            progress.advance(len(batch))
            if len(rows) >= flush_every:
                flush()
        result.extra.update(video_from=donor, video_reused=len(copied))
        todo = [c for c in todo if c not in copied]
    groups = clip_groups(root, todo) if todo else []
    decoded = decode_clips(root, enc, groups, workers=workers, frames_per_clip=enc.info.num_frames)
    for batch in batches(decoded, batch_size):
        for r in embed_batch(enc, batch, texts=texts):
            rows.append(r)
            result.count(r)
        progress.advance(len(batch))
        if len(rows) >= flush_every:
            flush()
    flush()
    return result.done()


def embedded_ids(table, clip_ids: list[str] | None = None) -> set[str]:
    """Clip ids already in an embedding table (only among ``clip_ids`` when given: a batch reads its own)."""
    if clip_ids is None:
        return table.keys()
    if not clip_ids or not table.exists():
        return set()
    t = table.read_arrow(columns=["clip_id"], filter=ds.field("clip_id").isin(pa.array(clip_ids, pa.string())))
    return set(t["clip_id"].to_pylist())


class _Vector:
    """A clip vector copied from another embedding set (``embed_batch`` passes it through unchanged)."""

    def __init__(self, values: list[float]) -> None:
        self.values = values


def _donor_batches(root: Root, donor: str, clip_ids: list[str], batch_size: int):
    """Batches ``[(clip, _Vector, None)]`` of the ok clip vectors of ``embeddings/<donor>`` for ``clip_ids``."""
    import pyarrow.dataset as pads

    flt = (pads.field("status") == "ok") & pads.field("clip_id").isin(clip_ids)
    batch: list = []
    for rb in root.embeddings(donor).iter_batches(columns=["clip_id", "video_emb", "status"], filter=flt,
                                                 batch_size=max(1, batch_size)):
        for cid, vec in zip(rb.column("clip_id").to_pylist(), rb.column("video_emb").to_pylist()):
            batch.append(({"clip_id": cid}, _Vector(vec), None))
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def embed_batch(enc, batch: list[tuple[dict, Any, str | None]], texts: dict[str, str] | None = None) -> list[dict]:
    """Rows for decoded clips ``(clip, input, decode error)``; ``texts`` (clip id -> text) replaces the clips'
    own captions; an input that is a :class:`_Vector` is a clip vector copied from another set."""
    now = time.time()
    rows: list[dict] = []
    good = [(c, x) for c, x, err in batch if err is None]
    if texts is not None:
        good = [({**c, "caption": texts.get(c["clip_id"])}, x) for c, x in good]
    for c, _, err in batch:
        if err is not None:
            rows.append({"clip_id": c["clip_id"], "status": "error", "error": f"decode: {err}", "updated_at": now})
    if not good:
        return rows
    copied = all(isinstance(x, _Vector) for _, x in good)
    try:
        videos = [x.values for _, x in good] if copied else enc.embed_video_batch([x for _, x in good])
    except Exception:
        videos = None  # isolate the failing clip(s) below
    captions = sorted({c["caption"] for c, _ in good if isinstance(c.get("caption"), str) and c["caption"]})
    text = {}
    if captions:
        try:
            t = enc.embed_texts(captions)
            text = {cap: t[i] for i, cap in enumerate(captions)}
        except Exception as e:
            text = {cap: e for cap in captions}
    for i, (c, x) in enumerate(good):
        row = {"clip_id": c["clip_id"], "updated_at": now, "status": "ok", "error": None}
        try:
            v = videos[i] if videos is not None else enc.embed_video_batch([x])[0]
            row["video_emb"] = np.asarray(v, dtype=np.float32).ravel().tolist()
        except Exception as e:
            rows.append({**row, "status": "error", "error": f"encoder: {type(e).__name__}: {str(e)[:300]}"})
            continue
        cap = c.get("caption")
        tv = text.get(cap) if isinstance(cap, str) else None
        if isinstance(tv, Exception):
            row["error"] = f"caption not embedded: {tv}"
        elif tv is not None:
            row["text_emb"] = np.asarray(tv, dtype=np.float32).tolist()
        rows.append(row)
    return rows
