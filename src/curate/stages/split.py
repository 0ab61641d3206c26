"""Split: scene detection over each ingested source -> rows of the ``clips`` table.

A clip is the half-open frame range ``[start_frame, end_frame)`` of a source; ``start_s``/``end_s``
are those frames' times. Scenes shorter than ``min_clip_s`` are dropped; scenes longer than
``max_clip_s`` are cut into equal pieces no longer than the maximum. Clip ids are derived from the
source id and the frame range, so they are stable across reruns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from curate.faults import crashpoint
from curate.plugins import get_splitter
from curate.progress import NullProgress, Progress, StageResult
from curate.splitters.base import track_source
from curate.store import SCHEMAS, Root, rows_to_table
from curate.store.schemas import TRANSITIONS_SCHEMA


def shape_scenes(ranges: Iterable[tuple[int, int]], fps: float, *, min_clip_s: float, max_clip_s: float | None,
                 num_frames: int | None = None) -> list[tuple[int, int]]:
    """Apply the duration rules: drop scenes under ``min_clip_s``, cut those over ``max_clip_s`` evenly."""
    out = []
    for a, b in ranges:
        if num_frames is not None:
            b = min(b, num_frames)
        n = b - a
        if n <= 0 or n / fps < min_clip_s:
            continue
        if max_clip_s and n / fps > max_clip_s:
            max_frames = max(1, math.floor(max_clip_s * fps))
            pieces = math.ceil(n / max_frames)
            bounds = [a + round(i * n / pieces) for i in range(pieces + 1)]
            out.extend((bounds[i], bounds[i + 1]) for i in range(pieces)
                       if (bounds[i + 1] - bounds[i]) / fps >= min_clip_s)
        else:
            out.append((a, b))
    return out


def clip_id(source_id: str, start_frame: int, end_frame: int) -> str:
    return f"{source_id}-{start_frame:07d}-{end_frame:07d}"


def split(root: Root | str, *, source_ids: Iterable[str] | None = None, detector: str = "auto",
          options: dict[str, Any] | None = None, min_clip_s: float = 1.0, max_clip_s: float | None = 60.0,
          progress: Progress | None = None) -> StageResult:
    """Detect scenes in every ingested source not split yet (or only ``source_ids``)."""
    root = Root(root) if not isinstance(root, Root) else root
    progress = progress or NullProgress()
    result = StageResult("split")
    splitter = get_splitter(detector).create(**(options or {}))
    detector = getattr(splitter, "name", detector)  # what `auto` picked: the clips record it
    with root.ensure().shared_run("split") as run:
        appender = ClipAppender(root)
        wanted = set(source_ids) if source_ids is not None else None
        todo, result.skipped = pending_sources(root, appender.done, wanted,
                                               ["source_id", "status", "media_path", "fps", "num_frames", "caption"])
        result.total = len(todo)
        if todo and hasattr(splitter, "load"):
            splitter.load()  # a bad weights file stops here, not as an error row on every source
        progress.start(len(todo), f"split ({detector})")
        clips_total = 0
        for row in todo:
            if not run.claim(row["source_id"]):  # a concurrent split of this root is on it
                result.total -= 1
                result.skipped += 1
                progress.advance()
                continue
            rows, transitions = split_one(root, row, splitter, detector, min_clip_s=min_clip_s, max_clip_s=max_clip_s)
            if not appender.append(row["source_id"], rows, transitions):  # a run that finished before we claimed did it
                result.total -= 1
                result.skipped += 1
                progress.advance()
                continue
            crashpoint("split-source")
            if rows and rows[0]["status"] == "error":
                result.add_error(row["source_id"], rows[0]["error"])
            else:
                result.ok += 1
                clips_total += len(rows)
            progress.advance()
        result.extra["clips"] = clips_total
    return result.done()


def pending_sources(root: Root, done: set[str], wanted: set[str] | None,
                    columns: list[str]) -> tuple[list[dict], int]:
    """The ingested sources (``columns`` of their rows) still to split: status ok, not in ``done``, and in
    ``wanted`` unless it is None; and how many of the ok and wanted ones are done already."""
    todo, already = [], 0
    for row in root.sources.read_arrow(columns=columns).to_pylist():
        if row["status"] != "ok" or (wanted is not None and row["source_id"] not in wanted):
            continue
        if row["source_id"] in done:
            already += 1
            continue
        todo.append(row)
    return todo, already


def clip_row(src: dict, a: int, b: int, index: int, detector: str, now: float) -> dict:
    """The clips-table row of frames [a, b) of a source."""
    fps, sid = float(src["fps"]), src["source_id"]
    return {"clip_id": clip_id(sid, a, b), "source_id": sid, "clip_index": index, "start_s": a / fps,
            "end_s": b / fps, "start_frame": a, "end_frame": b, "duration_s": (b - a) / fps,
            "caption": src.get("caption"), "splitter": detector, "status": "ok", "error": None, "updated_at": now}


def error_row(sid: str, kind: str, message: str, detector: str, now: float) -> dict:
    """The one row of a source that could not be split (clip_id ``<source_id>-error`` or ``-none``)."""
    return {"clip_id": f"{sid}-{kind}", "source_id": sid, "status": "error", "error": message,
            "splitter": detector, "updated_at": now}


def transition_rows(src: dict, transitions: list[dict], detector: str, now: float) -> list[dict]:
    fps, sid = float(src["fps"]), src["source_id"]
    return [{"transition_id": f"{sid}-{t['start_frame']:07d}-{t['end_frame']:07d}", "source_id": sid,
             "start_frame": t["start_frame"], "end_frame": t["end_frame"], "start_s": t["start_frame"] / fps,
             "end_s": t["end_frame"] / fps, "kind": t["kind"], "score": t.get("score"), "splitter": detector,
             "updated_at": now} for t in transitions]


def failure_message(e: BaseException) -> str:
    return str(e).splitlines()[0][:300] if str(e) else type(e).__name__


class ClipAppender:
    """Adds the clip rows of one source at a time, unless a concurrent run already wrote that source.

    Each source is one commit that inserts only clip ids the table does not hold (``insert_missing``:
    clip ids are derived from the source and frames, so a source split twice, by two runs on two
    machines, lands once); it returns False when every row was there already.
    """

    def __init__(self, root: Root) -> None:
        self.root = root
        self.done = set(root.clips.read_arrow(columns=["source_id"])["source_id"].to_pylist())

    def append(self, source_id: str, rows: list[dict], transitions: list[dict] | None = None) -> bool:
        """Write the clips of one source (and its transitions, first: a crash between leaves transitions that a
        rerun writes again under the same ids) unless a concurrent run already did."""
        if source_id in self.done:
            return False
        if transitions:
            self.root.transitions.insert_missing(rows_to_table(transitions, TRANSITIONS_SCHEMA))
        inserted = self.root.clips.insert_missing(rows_to_table(rows, SCHEMAS["clips"]))
        self.done.add(source_id)
        return inserted > 0


def split_one(root: Root, row: dict, splitter, detector: str, *, min_clip_s: float,
              max_clip_s: float | None) -> tuple[list[dict], list[dict]]:
    """Clip rows of one source (one error row, clip_id ``<source_id>-error``, when it cannot be split) and
    its transition rows."""
    sid, fps, n = row["source_id"], float(row["fps"]), int(row["num_frames"])
    now = time.time()
    try:
        path = root.media_file(row["media_path"])
        if hasattr(splitter, "tracker"):  # built-ins: one decode feeds the detector frame by frame
            ranges, transitions = track_source(splitter, path, fps, n)
        else:  # a plugin's splitter: a callable (path, fps, num_frames) -> ranges
            ranges, transitions = splitter(path, fps, n), []
        ranges = shape_scenes(ranges, fps, min_clip_s=min_clip_s, max_clip_s=max_clip_s, num_frames=n)
    except Exception as e:  # a broken file must not sink the batch
        return [error_row(sid, "error", f"scene detection failed: {failure_message(e)}", detector, now)], []
    rows = [clip_row(row, a, b, i, detector, now) for i, (a, b) in enumerate(ranges)]
    rows = rows or [error_row(sid, "none", f"no scene of at least {min_clip_s} s", detector, now)]
    return rows, transition_rows(row, transitions, detector, now)
