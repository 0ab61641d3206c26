"""What the content scorers (``text``, ``nsfw``, ``quality``) share: the decode size of small analysis
frames, chunk sizing for :func:`curate.media.frames.decode_clips`, and the result table with one error column.

Each of them samples a few frames per clip through :mod:`curate.media.frames` (one decord reader per
source, decoded in threads ahead of the model), scores every clip on its own, and turns a clip that
fails to decode or to score into a row with nulls and a readable reason; the rest of the batch goes on.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from curate.media.frames import MAX_FRAMES_PER_READ

#: frames per decode chunk for scorers that keep decoded frames until the model sees them (memory bound)
CHUNK_FRAMES = 64


def size_for_width(width: int, height: int, target: int) -> tuple[int, int]:
    """(w, h) scaled so the width is ``target`` (never upscaled), both even."""
    target = min(int(target), int(width))
    w = max(2, target // 2 * 2)
    h = max(2, int(round(int(height) * w / int(width) / 2)) * 2)
    return w, h


def size_for_long_side(width: int, height: int, target: int) -> tuple[int, int]:
    """(w, h) scaled so the longer side is ``target`` (never upscaled), both even."""
    s = min(1.0, int(target) / max(int(width), int(height)))
    return max(2, int(round(int(width) * s / 2)) * 2), max(2, int(round(int(height) * s / 2)) * 2)


def frames_per_chunk(frames_per_clip: int) -> int:
    """The ``frames_per_clip`` to pass to :func:`curate.media.frames.decode_clips` so that one decode chunk holds
    about :data:`CHUNK_FRAMES` frames (decode_clips cuts chunks of 256 frames)."""
    clips = max(1, CHUNK_FRAMES // max(1, frames_per_clip))
    return max(1, MAX_FRAMES_PER_READ // clips)


def result_table(clip_ids: pa.Array, schema: dict[str, pa.DataType], values: dict[str, dict[str, Any]],
                 errors: dict[str, str], error_columns: list[str]) -> pa.Table:
    """``clip_id``, one column per ``schema`` entry (null where a clip has no value) and the error columns."""
    ids = clip_ids.to_pylist()
    cols: dict[str, pa.Array] = {"clip_id": clip_ids}
    for name, typ in schema.items():
        cols[name] = pa.array([values.get(i, {}).get(name) for i in ids], typ)
    for name in error_columns:
        cols[name] = pa.array([errors.get(i) if i not in values else None for i in ids], pa.string())
    return pa.table(cols)


def short_error(e: BaseException) -> str:
    s = str(e)
    return s.splitlines()[0][:300] if s else type(e).__name__
