"""The splitter contract: what a splitter plugin's factory returns, and the one decode pass built-ins share.

A splitter plugin (:func:`curate.hookspecs.register_splitters`) registers a factory; ``factory(**options)``
returns a :class:`Splitter`: a callable ``(path, fps, num_frames) -> [(start_frame, end_frame), ...]``, the
half-open frame ranges of the scenes of the video at ``path`` (``fps`` and ``num_frames`` from the sources
table). A splitter that also has ``tracker(fps, width, height)`` returning a :class:`Tracker` is fed frames
of the decode the stage already runs (:func:`track_source`; `curate process` shares that decode with the
encoder), and may report transitions (dissolves, fades) whose frames belong to no clip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from curate.media.frames import decode_streams
from curate.media.video import Stream, probe

__all__ = ["Splitter", "Tracker", "scenes_from_boundaries", "track_source"]


@runtime_checkable
class Splitter(Protocol):
    """What a splitter factory returns: scene frame ranges ``[start_frame, end_frame)`` of one video."""

    def __call__(self, path: Path, fps: float, num_frames: int) -> list[tuple[int, int]]: ...


class Tracker(Protocol):
    """One source's frames in, scene boundaries out (optional, from ``Splitter.tracker(fps, width, height)``).

    ``streams``: the frame formats it wants from the decode (one tuple of frames per decoded frame is pushed);
    ``push`` and ``finish`` return boundaries ``(end, start)``: a scene ends (exclusive) at ``end`` and the next
    starts at ``start``; ``transitions``: dicts ``start_frame, end_frame, kind ("cut"/"gradual"), score``.
    """

    streams: list[Stream]
    skip_loop_filter: bool
    transitions: list[dict]

    def push(self, frames: tuple) -> list[tuple[int, int]]: ...

    def finish(self) -> list[tuple[int, int]]: ...


def track_source(splitter: Splitter, path: Path, fps: float, num_frames: int) -> tuple[list[tuple[int, int]], list[dict]]:
    """Run a splitter's tracker over one decode of ``path``: (scene ranges, transition spans)."""
    pr = probe(path)
    tracker = splitter.tracker(fps, pr.width, pr.height)
    boundaries: list[tuple[int, int]] = []
    n = 0
    for frames in decode_streams(path, tracker.streams, skip_loop_filter=tracker.skip_loop_filter,
                                 duration_s=pr.duration_s):
        boundaries += tracker.push(frames)
        n += 1
    if n == 0:
        return [(0, num_frames)], []
    boundaries += tracker.finish()
    return scenes_from_boundaries(boundaries, n), tracker.transitions


def scenes_from_boundaries(boundaries, n_frames: int) -> list[tuple[int, int]]:
    """Frame ranges of ``n_frames`` decoded frames between boundaries ``(end, start)``: a scene ends (exclusive)
    at ``end`` and the next starts at ``start``; frames in between (a dissolve, a fade) belong to no scene."""
    out, a = [], 0
    for end, start in sorted(boundaries):
        if min(end, n_frames) > a:
            out.append((a, min(end, n_frames)))
        a = max(a, start)
    if n_frames > a:
        out.append((a, n_frames))
    return out
