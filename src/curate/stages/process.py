"""Process: split and embed in ONE decode pass per source (`curate process`).

Each source is decoded once by ffmpeg into several outputs of that one decode: I420 frames at the
encoder's decode size (as `curate embed -o decoder=ffmpeg` reads them), and the frames the splitter
reads (256 px BGR for the PySceneDetect detectors, 48x27 RGB for TransNetV2), scaled by ffmpeg from the
full-size frames as `curate split` scales them; frames of the scene in progress are kept in RAM up to 256 MiB,
the rest of a longer scene in a memory-mapped file under ``ROOT/.tmp`` (memory stays flat however
long a shot is); when the detector closes a scene, its
clips are cut by the same rules as `curate split`, their sampled frames converted to RGB and queued for
the encoder, which runs batches while decoding goes on. The clips and embeddings written are those
`curate split` then `curate embed -o decoder=ffmpeg` would write; sources already split are embedded
the usual way.

TransNetV2 sees the same frames as in `curate split` (both decode with deblocking), so both give the same
clips and transitions. The PySceneDetect detectors see deblocked frames here, while `curate split`
decodes without deblocking (faster); on hard cuts both give the same scenes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from curate.encoders import load_encoder
from curate.errors import CurateError
from curate.faults import crashpoint
from curate.media.frames import decode_streams, read_ahead, sample_stream
from curate.media.video import yuv_to_rgb
from curate.plugins import get_encoder, get_splitter
from curate.progress import NullProgress, Progress, StageResult
from curate.stages.embed import check_meta, embed, embed_batch, embedding_meta
from curate.stages.split import ClipAppender, clip_row, error_row, failure_message, pending_sources, shape_scenes, transition_rows
from curate.store import Root, embedding_schema, maintain, rows_to_table
from curate.store.storage import scratch_dir

#: frames of the scene in progress kept in RAM; a longer scene goes on in a file under ROOT/.tmp
SCENE_RAM_BYTES = 256 << 20


class _DiskFrames:
    """Frames in a growable memory-mapped file (for scenes that outgrow RAM)."""

    def __init__(self, directory, shape: tuple[int, ...]) -> None:
        fd, self.path = tempfile.mkstemp(prefix="scene-", suffix=".u8", dir=directory)
        os.close(fd)
        self.shape, self.cap, self.n = shape, 0, 0
        self.mm: np.memmap | None = None

    def append(self, frame: np.ndarray) -> None:
        if self.n == self.cap:
            self.cap = max(64, self.cap * 2)
            old = self.mm
            self.mm = np.memmap(self.path, np.uint8, "r+" if old is not None else "w+", shape=(self.cap, *self.shape))
        self.mm[self.n] = frame
        self.n += 1

    def get(self, k: int) -> np.ndarray:
        return np.asarray(self.mm[k])

    def drop_first(self, k: int) -> None:
        rest = self.n - k
        if rest > 0 and k > 0:
            self.mm[:rest] = self.mm[k:self.n]
        self.n = max(0, rest)

    def close(self) -> None:
        self.mm = None
        os.unlink(self.path)


class _SceneFrames:
    """The frames of the scene in progress: in RAM up to ``ram_bytes``, the rest of a longer scene in a file
    (memory stays flat however long a shot is)."""

    def __init__(self, directory, shape: tuple[int, ...], ram_bytes: int = SCENE_RAM_BYTES) -> None:
        self.directory, self.shape = directory, shape
        self.ram_frames = max(1, ram_bytes // int(np.prod(shape)))
        self.ram: list[np.ndarray] = []  # frames start .. start + len(ram) - 1 (the decoder's own arrays)
        self.disk: _DiskFrames | None = None  # the frames after those
        self.start = 0

    @property
    def n(self) -> int:
        return len(self.ram) + (self.disk.n if self.disk is not None else 0)

    def append(self, frame: np.ndarray) -> None:
        if self.disk is None and len(self.ram) < self.ram_frames:
            self.ram.append(frame)
            return
        if self.disk is None:
            self.disk = _DiskFrames(self.directory, self.shape)
        self.disk.append(frame)

    def get(self, frame_index: int) -> np.ndarray:
        k = min(frame_index - self.start, self.n - 1)
        return self.ram[k] if k < len(self.ram) else self.disk.get(k - len(self.ram))

    def drop_before(self, frame_index: int) -> None:
        """Forget frames before ``frame_index`` (the new scene's start), keeping the ones after it."""
        k = frame_index - self.start
        if k <= 0:
            return
        on_disk = max(0, k - len(self.ram))
        self.ram = self.ram[k:]
        self.start = frame_index
        if self.disk is not None:
            self.disk.drop_first(on_disk)
            if len(self.ram) + self.disk.n <= self.ram_frames:  # what is left fits in RAM again
                self.ram += [self.disk.get(i).copy() for i in range(self.disk.n)]
                self.disk.close()
                self.disk = None

    def close(self) -> None:
        self.ram = []
        if self.disk is not None:
            self.disk.close()
            self.disk = None


def feeds_one_pass(splitter) -> bool:
    """Whether a splitter (a created one) can be fed frame by frame from the one decode pass of `process`."""
    return hasattr(splitter, "tracker")


def process(root: Root | str, encoder: str = "clip", *, options: dict[str, Any] | None = None, name: str | None = None,
            detector: str = "auto", detector_options: dict[str, Any] | None = None, min_clip_s: float = 1.0,
            max_clip_s: float | None = 60.0, device: str = "auto", batch_size: int = 32, flush_every: int = 512,
            workers: int = 1, source_ids: Iterable[str] | None = None, progress: Progress | None = None,
            encoder_obj=None, splitter_obj=None) -> StageResult:
    """Split and embed every ingested source not split yet, decoding each source once.

    ``workers`` sources are decoded at a time (each by its own ffmpeg, its detector in a thread): one
    decode of one source rarely keeps a many-core GPU node busy. ``source_ids`` makes it per-batch work
    (as :func:`curate.stages.embed.embed`): only those sources, no ``embed-<name>`` lock, appends only, no table
    maintenance; without it the whole root, under the lock, maintained at the end. ``encoder_obj`` /
    ``splitter_obj``: an encoder (from :func:`curate.encoders.load_encoder`) and a splitter created before
    (a resident worker loads them once for many batches)."""
    root = Root(root) if not isinstance(root, Root) else root
    progress = progress or NullProgress()
    options = {**{k: str(v) for k, v in (options or {}).items()}, "decoder": "ffmpeg"}
    name = name or encoder
    get_encoder(encoder)
    splitter, detector = _one_pass_splitter(detector, detector_options, splitter_obj)
    result = StageResult("process", extra={"encoder": encoder, "name": name, "detector": detector})
    wanted = set(source_ids) if source_ids is not None else None
    # the whole root: one run per embedding set (the lock), maintained at the end; per batch: neither
    exclusive = root.ensure().lock(f"embed-{name}") if wanted is None else contextlib.nullcontext()
    with root.shared_run("split") as run, exclusive:
        run.ready()  # (split's protocol: concurrent runs share the sources, each claimed by one of them)
        check_meta(root, name, encoder, options)
        table = root.embeddings(name)
        appender = ClipAppender(root)
        sources = pending_sources(root, appender.done, wanted, PROCESS_COLUMNS)[0]
        result.total = len(sources)
        if sources and hasattr(splitter, "load"):
            splitter.load()  # a bad weights file stops here, not as an error row on every source
        enc = encoder_obj or load_encoder(encoder, options, device)
        enc.decoder = "ffmpeg"
        root.write_embedding_meta(name, embedding_meta(encoder, options, enc))
        progress.start(len(sources), f"process ({detector} + {name})")
        tmpdir, workers = scratch_dir(), max(1, int(workers))

        def items(src):
            if run.claim(src["source_id"]):
                yield from _process_source(root, src, enc, splitter, detector, min_clip_s, max_clip_s, tmpdir,
                                           SCENE_RAM_BYTES // workers)
            else:
                yield "skip", src, None

        writer = _OnePassWriter(lambda batch: embed_batch(enc, batch),
                                lambda rows: table.append(rows_to_table(rows, embedding_schema())),
                                appender.append, result, progress, batch_size=batch_size, flush_every=flush_every)
        for kind, src, payload in _sources_ahead(sources, items, workers, size=2 * batch_size):  # ahead of the model
            writer.take(kind, src, payload)
        writer.close()
    if wanted is None:
        maintain(root, ["clips"])
        with root.write_lock("clips"):
            root.transitions.maybe_compact()
    # clips of sources split before (by `curate split`) still need embeddings: the usual way (it maintains
    # the embedding table at the end of a whole-root run)
    leftover = embed(root, encoder, options=options, name=name, device=device, batch_size=batch_size, encoder_obj=enc,
                     source_ids=wanted)
    result.extra["embedded_separately"] = leftover.total
    return result.done()


#: the sources-table columns the one pass reads
PROCESS_COLUMNS = ["source_id", "status", "media_path", "fps", "num_frames", "width", "height", "duration_s", "caption"]


def _one_pass_splitter(detector: str, detector_options: dict[str, Any] | None, splitter_obj=None) -> tuple[Any, str]:
    """The splitter (``splitter_obj`` or a new one of plugin ``detector``) and the name its clips record (what
    ``auto`` picked); a splitter that cannot be fed frame by frame is an error before any source is touched."""
    splitter = splitter_obj or get_splitter(detector).create(**(detector_options or {}))
    if not feeds_one_pass(splitter):
        raise CurateError(f"splitter {detector!r} cannot be fed frame by frame (it has no tracker): use `curate split` "
                          "then `curate embed`")
    return splitter, getattr(splitter, "name", detector)


class _OnePassWriter:
    """Writes what the one pass yields, in an order that keeps one invariant: **an embedding is written only after
    its clip row**. A crash between the two leaves clips without embeddings (which a rerun's leftover embed fills),
    never an embedding whose clip is not in the clips table.

    Clips of a source are written when its decode ends ("end"), while the encoder embeds its clips as scenes close
    ("clip"): embeddings of a source whose clips are not written yet wait; those of a source whose clips a
    concurrent run wrote first, or that ended as an error row, are dropped.

    ``embed(batch)`` gives the embedding rows of a batch of model inputs, ``write(rows)`` appends embedding rows,
    ``append_clips(source_id, clip_rows, transitions)`` writes a source's clips (False: a concurrent run did)."""

    def __init__(self, embed: Callable[[list], list[dict]], write: Callable[[list[dict]], None],
                 append_clips: Callable[[str, list[dict], list[dict]], bool], result: StageResult,
                 progress: Progress, *, batch_size: int = 32, flush_every: int = 512) -> None:
        self.embed, self.write, self.append_clips = embed, write, append_clips
        self.result, self.progress = result, progress
        self.batch_size, self.flush_every = batch_size, flush_every
        self.rows: list[dict] = []      # embeddings ready to write (their clips are in the table)
        self.waiting: dict[str, list[dict]] = {}  # source id -> embeddings whose clips are not written yet
        self.written: set[str] = set()
        self.dropped: set[str] = set()
        self.batch: list = []
        self.clips = 0

    def take(self, kind: str, src: dict, payload) -> None:
        """One item of :func:`_process_source` (or ``("skip", src, None)`` for a source another run claimed)."""
        if kind == "clip":
            self.batch.append(payload)
            if len(self.batch) >= self.batch_size:
                self._run_batch()
        elif kind == "skip":
            self.result.total -= 1
            self.result.skipped += 1
        else:  # "end": the source's clips (or its one error row) and transitions
            self._end(src["source_id"], *payload)

    def close(self) -> None:
        """Embed the last batch and write every embedding whose clips are written."""
        if self.batch:
            self._run_batch()
        if self.rows:
            self.write(self.rows)
            self.rows = []
        self.result.extra["clips"] = self.clips

    def _run_batch(self) -> None:
        for r in self.embed(self.batch):
            sid = r["clip_id"].rsplit("-", 2)[0]
            if sid in self.written:
                self.rows.append(r)
            elif sid not in self.dropped:
                self.waiting.setdefault(sid, []).append(r)
        self.batch = []
        if len(self.rows) >= self.flush_every:
            self.write(self.rows)
            self.rows = []

    def _end(self, sid: str, clip_rows: list[dict], transitions: list[dict]) -> None:
        result = self.result
        if not self.append_clips(sid, clip_rows, transitions):  # a concurrent run finished it first
            result.total -= 1
            result.skipped += 1
            self.dropped.add(sid)
            self.waiting.pop(sid, None)
            return
        crashpoint("process-source")  # (tests: a source's clips written, its embeddings not yet)
        if clip_rows and clip_rows[0]["status"] == "error":  # embeddings of its clips would be orphans
            self.dropped.add(sid)
            self.waiting.pop(sid, None)
            result.add_error(sid, clip_rows[0]["error"])
        else:
            self.written.add(sid)
            self.rows.extend(self.waiting.pop(sid, []))
            result.ok += 1
            self.clips += len(clip_rows)
        self.progress.advance()


def _sources_ahead(sources: list[dict], items, workers: int, size: int):
    """``items(src)`` of every source, from ``workers`` producer threads that each take the next source
    when done with one, up to ``size`` items ahead of the consumer."""
    import threading

    lock, todo = threading.Lock(), iter(sources)

    def next_source():
        with lock:
            return next(todo, None)

    def worker():
        while (src := next_source()) is not None:
            yield from items(src)

    return read_ahead(*(worker() for _ in range(max(1, workers))), size=size)


def _process_source(root: Root, src: dict, enc, splitter, detector: str, min_clip_s: float, max_clip_s: float | None,
                    tmpdir, ram_bytes: int = SCENE_RAM_BYTES):
    """One decode of one source. Yields ("clip", src, (clip row, model input, error)) as scenes close,
    then ("end", src, (clip rows or one error row, transition rows))."""
    sid, fps, n_probe = src["source_id"], float(src["fps"]), int(src["num_frames"])
    now = time.time()
    w, h = int(src["width"]), int(src["height"])
    enc_stream = sample_stream(enc, w, h)
    scene = _SceneFrames(tmpdir, enc_stream.frame_shape, ram_bytes)
    clip_rows: list[dict] = []
    ready: list[tuple] = []
    scene_start = 0

    def close_scene(a: int, b: int) -> None:
        for ca, cb in shape_scenes([(a, b)], fps, min_clip_s=min_clip_s, max_clip_s=max_clip_s, num_frames=n_probe):
            row = clip_row(src, ca, cb, len(clip_rows), detector, now)
            clip_rows.append(row)
            try:
                idx = [ca + i for i in enc.frame_indices(cb - ca, fps)]
                ready.append(("clip", src, (row, enc.preprocess(np.stack([yuv_to_rgb(scene.get(i)) for i in idx])), None)))
            except Exception as e:
                ready.append(("clip", src, (row, None, failure_message(e))))

    def boundary(end: int, start: int, n: int) -> None:
        """The scene in progress ends (exclusive) at ``end``; the next starts at ``start`` (after a dissolve's frames)."""
        nonlocal scene_start
        end, start = min(end, n + 1), min(start, n + 1)
        if end > scene_start:
            close_scene(scene_start, end)
        if start > scene_start:
            scene.drop_before(start)
            scene_start = start

    try:
        tracker = splitter.tracker(fps, w, h)
        n = -1
        # one decode, scaled from full resolution to the encoder's size (I420) and to the splitter's frames
        for n, (frame, *det) in enumerate(decode_streams(root.media_file(src["media_path"]), [enc_stream, *tracker.streams],
                                                         duration_s=src.get("duration_s"))):
            scene.append(frame)
            for end, start in tracker.push(tuple(det)):
                boundary(end, start, n)
            yield from ready
            ready.clear()
        if n >= 0:
            for end, start in tracker.finish():
                boundary(end, start, n)
            if n + 1 > scene_start:
                close_scene(scene_start, n + 1)
            yield from ready
    except Exception as e:
        yield "end", src, ([error_row(sid, "error", f"scene detection failed: {failure_message(e)}", detector, now)], [])
        return
    finally:
        scene.close()
    rows = clip_rows or [error_row(sid, "none", f"no scene of at least {min_clip_s} s", detector, now)]
    yield "end", src, (rows, transition_rows(src, tracker.transitions, detector, now))
