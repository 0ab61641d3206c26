"""Per-source frame features, as v-iashin/video_features writes them (`curate features`).

For each ingested source: frames at ``fps`` per second (or ``frames`` uniformly over the whole video,
or every frame), each through the encoder's image tower: raw projected embeddings ``(num_frames, D)``
(not normalised, as video_features stores them), ``timestamps_ms`` and ``fps``. Stored in
``ROOT/features/<name>/part-*.parquet`` (one row per source: ``features`` flattened, ``shape``), and
with ``save_numpy`` also as ``<source_id>_<name>.npy``, ``<source_id>_timestamps_ms.npy`` and
``<source_id>_fps.npy`` under ``ROOT/features_npy/<name>/`` (video_features' save_numpy layout).
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from curate.encoders import load_encoder
from curate.errors import CurateError
from curate.media.video import get_frames, open_video
from curate.progress import NullProgress, Progress, StageResult
from curate.store import Root, safe_name
from curate.store.schemas import FEATURES_SCHEMA


def frame_times(duration_s: float, src_fps: float, num_frames: int, *, fps: float | None = None,
                frames: int | None = None) -> tuple[list[int], list[float], float]:
    """(frame indices, timestamps in ms, effective fps) for the sampling modes of video_features."""
    if fps and frames:
        raise CurateError("give --fps or --frames, not both (video_features refuses both too)")
    if frames:
        eff = frames / duration_s
        ts = [k / eff for k in range(frames)]
    elif fps:
        eff = float(fps)
        ts = [k / eff for k in range(int(np.floor(duration_s * eff - 1e-9)) + 1)]
    else:
        eff = src_fps
        ts = [k / src_fps for k in range(num_frames)]
    idx = [min(num_frames - 1, int(round(t * src_fps))) for t in ts]
    return idx, [t * 1000.0 for t in ts], eff


def features(root: Root | str, encoder: str = "clip", *, options: dict[str, Any] | None = None, name: str | None = None,
             fps: float | None = None, frames: int | None = None, device: str = "auto", batch_size: int = 64,
             save_numpy: bool = False, progress: Progress | None = None) -> StageResult:
    root = Root(root) if not isinstance(root, Root) else root
    progress = progress or NullProgress()
    name = name or encoder
    result = StageResult("features", extra={"encoder": encoder, "name": name})
    table = root.features(name)
    with root.ensure().lock(f"features-{name}"):
        done = table.keys()
        sources = [s for s in root.sources.read_arrow(columns=["source_id", "status", "media_path", "fps", "num_frames",
                                                               "duration_s"]).to_pylist() if s["status"] == "ok"]
        todo = [s for s in sources if s["source_id"] not in done]
        result.skipped, result.total = len(sources) - len(todo), len(todo)
        if not todo:
            return result.done()
        enc = load_encoder(encoder, options, device)
        if not hasattr(enc, "embed_frames"):
            raise CurateError(f"encoder {encoder!r} has no per-frame image features (the clip encoder has)")
        progress.start(len(todo), f"features ({name})")
        for s in todo:
            row = {"source_id": s["source_id"], "updated_at": time.time()}
            try:
                idx, ts, eff = frame_times(s["duration_s"], s["fps"], s["num_frames"], fps=fps, frames=frames)
                vr = open_video(root.media_file(s["media_path"]))
                feats = np.concatenate([enc.embed_frames(get_frames(vr, idx[i:i + batch_size]), batch_size)
                                        for i in range(0, len(idx), batch_size)]).astype(np.float32)
                row.update(features=feats.ravel().tolist(), shape=list(feats.shape), timestamps_ms=ts, fps=eff,
                           status="ok")
                if save_numpy:
                    d = f"features_npy/{safe_name(name)}"
                    for suffix, arr in ((name, feats), ("timestamps_ms", np.asarray(ts)), ("fps", np.asarray(eff))):
                        buf = io.BytesIO()
                        np.save(buf, arr)
                        root.write_bytes(f"{d}/{s['source_id']}_{suffix}.npy", buf.getvalue())
                result.ok += 1
            except Exception as e:  # one bad source never sinks the batch
                row.update(status="error", error=str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
                result.add_error(s["source_id"], row["error"])
            table.append(pa.Table.from_pylist([row], schema=FEATURES_SCHEMA))
            progress.advance()
    return result.done()


def show_predictions(root: Root | str, texts: Sequence[str], *, name: str = "clip", encoder: str = "clip",
                     options: dict[str, Any] | None = None, device: str = "auto", source_ids: Sequence[str] | None = None):
    """Per-frame softmax over ``texts`` (logit scale of the model), from stored features: [(source_id, ts, probs)]."""
    root = Root(root) if not isinstance(root, Root) else root
    enc = load_encoder(encoder, options, device)
    t = enc.embed_text_batch(list(texts)).astype(np.float64)
    scale = getattr(enc, "logit_scale", 100.0)
    table = root.features(name)
    out = []
    for row in table.read_arrow().to_pylist():
        if row["status"] != "ok" or (source_ids and row["source_id"] not in source_ids):
            continue
        f = np.asarray(row["features"], np.float64).reshape(row["shape"])
        f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        logits = scale * f @ t.T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        out.append((row["source_id"], row["timestamps_ms"], p))
    return out
