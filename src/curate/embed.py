"""Embed: run an encoder plugin over every clip (sampled frames -> vector) and its caption (text -> vector).

Sources are decoded once each with decord (only the frames the encoder samples), in worker threads
that run ahead of the model, so decoding overlaps the forward pass. Clips are batched across
sources. Results go to ``ROOT/embeddings/<name>/`` (``name`` defaults to the encoder name; use
another name to keep embeddings of two configurations of one encoder side by side).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.faults import crashpoint
from curate.frames import batches, clip_groups, decode_clips
from curate.progress import NullProgress, Progress, StageResult
from curate.store import Root, embedding_schema, rows_to_table, write_bytes_atomic


def parse_options(pairs: Iterable[str]) -> dict[str, str]:
    """``["model=ViT-B-32", "frames=8"]`` -> dict; a pair without '=' is an invocation error."""
    out = {}
    for p in pairs or ():
        if "=" not in p:
            raise CurateError(f"Option {p!r} is not key=value (example: -o model=ViT-B-32).")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


#: options every encoder takes, handled here rather than by the plugin
DECODERS = ("decord", "ffmpeg")


def load_encoder(encoder: str, options: dict[str, Any] | None = None, device: str = "auto"):
    """Create an encoder from its plugin. ``decoder=decord|ffmpeg`` (any encoder) picks how clip frames are
    read: decord's random access (default), or one sequential ffmpeg decode per source (what
    `curate process` uses, so that its embeddings equal `curate embed -o decoder=ffmpeg`)."""
    from curate.plugins import get_encoder

    options = dict(options or {})
    decoder = str(options.pop("decoder", "decord"))
    if decoder not in DECODERS:
        raise CurateError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    enc = get_encoder(encoder).create(device=device, **options)
    if decoder != "decord" or not hasattr(enc, "decoder"):
        enc.decoder = decoder
    return enc


def _meta(encoder_name: str, options: dict, enc) -> dict:
    info = enc.info
    return {"encoder": encoder_name, "options": options, "model": info.model, "weights": info.weights,
            "embed_dim": info.embed_dim, "num_frames": info.num_frames, "frame_size": info.frame_size,
            "video_emb_shape": list(info.video_emb_shape),
            "similarity": "max_over_queries" if len(info.video_emb_shape) == 2 else "cosine",
            "score_range": getattr(enc, "score_range", ""), "extra": info.extra}


def check_meta(root: Root, name: str, encoder: str, options: dict) -> None:
    meta = root.embedding_meta(name)
    if meta and (meta.get("encoder") != encoder or meta.get("options") != options):
        raise CurateError(
            f"embeddings/{name} were made with encoder {meta.get('encoder')!r} options {meta.get('options')}; "
            f"this run asks for {encoder!r} options {options}. Pass --name NAME to keep both side by side, "
            f"or delete {root.path / 'embeddings' / name} to redo them."
        )


def embed(root: Root | str, encoder: str = "clip", *, options: dict[str, Any] | None = None, name: str | None = None,
          device: str = "auto", batch_size: int = 32, workers: int = 2, clip_ids: Iterable[str] | None = None,
          flush_every: int = 512, progress: Progress | None = None, encoder_obj=None) -> StageResult:
    """Embed every ok clip not embedded yet under ``embeddings/<name>``; returns counts."""
    root = Root(root) if not isinstance(root, Root) else root
    progress = progress or NullProgress()
    options = {k: str(v) for k, v in (options or {}).items()}
    name = name or encoder
    from curate.plugins import get_encoder

    get_encoder(encoder)  # an unknown name is an invocation error even when there is nothing to embed
    result = StageResult("embed", extra={"encoder": encoder, "name": name})
    with root.ensure().lock(f"embed-{name}"):
        check_meta(root, name, encoder, options)
        table = root.embeddings(name)
        table.repair()
        done = table.keys()
        clips = root.clips.read(columns=["clip_id", "source_id", "start_frame", "end_frame", "caption", "status"])
        clips = clips[clips["status"] == "ok"]
        if clip_ids is not None:
            clips = clips[clips["clip_id"].isin(set(clip_ids))]
        result.skipped = int(clips["clip_id"].isin(done).sum())
        clips = clips[~clips["clip_id"].isin(done)]
        result.total = len(clips)
        if clips.empty:
            return result.done()
        enc = encoder_obj or load_encoder(encoder, options, device)
        meta_path = table.path / "_meta.json"
        if not meta_path.exists():
            write_bytes_atomic(json.dumps(_meta(encoder, options, enc), indent=2, default=str), meta_path)
        result.extra["weights"] = enc.info.weights
        groups = clip_groups(root, clips["clip_id"].tolist())
        progress.start(len(clips), f"embed ({name})")
        rows: list[dict] = []
        def flush() -> None:
            if rows:
                table.append(rows_to_table(rows, embedding_schema()))
                rows.clear()
                crashpoint("embed-flush")
                table.tidy()

        decoded = decode_clips(root, enc, groups, workers=workers, frames_per_clip=enc.info.num_frames)
        for batch in batches(decoded, batch_size):
            for r in _embed_batch(enc, batch):
                rows.append(r)
                if r["status"] == "ok":
                    result.ok += 1
                else:
                    result.add_error(r["clip_id"], r["error"])
            progress.advance(len(batch))
            if len(rows) >= flush_every:
                flush()
        flush()
        table.maybe_compact()
    return result.done()


def _embed_batch(enc, batch: list[tuple[dict, Any, str | None]]) -> list[dict]:
    now = time.time()
    rows: list[dict] = []
    good = [(c, x) for c, x, err in batch if err is None]
    for c, _, err in batch:
        if err is not None:
            rows.append({"clip_id": c["clip_id"], "status": "error", "error": f"decode: {err}", "updated_at": now})
    if not good:
        return rows
    try:
        videos = enc.embed_video_batch([x for _, x in good])
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
