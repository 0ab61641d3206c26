"""Decode the sampled frames of many clips: one decord reader per source, sources decoded in threads
ahead of the consumer. Used by the embed stage and by scorers that look at pixels.

A *sampler* is any object with ``frame_indices(num_frames_in_clip, fps) -> [int]``,
``decode_size(width, height) -> (w, h) | None`` and ``preprocess(frames) -> Any`` (encoders are samplers).
"""

from __future__ import annotations

import fcntl
import os
import selectors
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from curate.errors import CurateError
from curate.media.video import (
    PIPE_BYTES,
    MediaError,
    Stream,
    decode_frames,
    ffmpeg_check,
    ffmpeg_reap,
    get_frames,
    open_video,
    probe,
    scaled_size,
    yuv_to_rgb,
)
from curate.store import Root

MAX_FRAMES_PER_READ = 256


class Sampler(Protocol):
    def frame_indices(self, num_frames_in_clip: int, fps: float) -> list[int]: ...
    def decode_size(self, width: int, height: int) -> tuple[int, int] | None: ...
    def preprocess(self, frames: np.ndarray) -> Any: ...


def clip_groups(root: Root, clip_ids: Iterable[str] | None = None) -> list[tuple[dict, list[dict]]]:
    """Ok clips grouped by source: [(source row, [clip rows])], sources in id order."""
    import pyarrow.compute as pc

    clips = root.clips.read_arrow(columns=["clip_id", "source_id", "start_frame", "end_frame", "caption", "status"])
    clips = clips.filter(pc.equal(clips["status"], "ok"))
    if clip_ids is not None:
        clips = clips.filter(pc.is_in(clips["clip_id"], value_set=_array(clip_ids)))
    sources = root.sources.read_arrow(columns=["source_id", "media_path", "fps", "width", "height"])
    by_source = {s["source_id"]: s for s in sources.to_pylist()}
    groups: dict[str, list[dict]] = {}
    for c in clips.sort_by([("source_id", "ascending"), ("start_frame", "ascending")]).to_pylist():
        groups.setdefault(c["source_id"], []).append(c)
    return [(by_source[sid], cl) for sid, cl in groups.items()]


def _array(ids):
    import pyarrow as pa

    return ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(list(ids), pa.string())


def decode_source(root: Root, sampler: Sampler, src: dict, clips: list[dict]) -> list[tuple[dict, Any, str | None]]:
    """Decode the sampled frames of the clips of one source: [(clip, preprocessed | None, error | None)]."""
    out: list[tuple[dict, Any, str | None]] = []
    try:
        size = sampler.decode_size(int(src["width"]), int(src["height"]))
        vr = open_video(root.media_file(src["media_path"]), size=size)
    except (MediaError, CurateError) as e:
        return [(c, None, str(e)) for c in clips]
    fps = float(src["fps"])
    n_decodable = len(vr)
    for c in clips:
        try:
            a, b = int(c["start_frame"]), min(int(c["end_frame"]), n_decodable)
            if b <= a:
                raise MediaError(f"clip frames {a}-{c['end_frame']} are past the decodable end ({n_decodable} frames)")
            idx = [a + i for i in sampler.frame_indices(b - a, fps)]
            out.append((c, sampler.preprocess(get_frames(vr, idx)), None))
        except Exception as e:  # one bad clip never sinks the source
            out.append((c, None, str(e).splitlines()[0][:300] if str(e) else type(e).__name__))
    return out


def decode_clips(root: Root, sampler: Sampler, groups: list[tuple[dict, list[dict]]], *, workers: int = 2,
                 frames_per_clip: int = 8) -> Iterator[tuple[dict, Any, str | None]]:
    """Decoded clips in source order, decoding up to ``2 * workers`` chunks ahead of the consumer.

    Samplers with ``decoder = "ffmpeg"`` are served by one sequential ffmpeg decode per source (a
    producer thread runs ahead of the consumer); the others by decord's random access.
    """
    if getattr(sampler, "decoder", "decord") == "ffmpeg":
        yield from read_ahead((item for src, clips in groups for item in decode_source_ffmpeg(root, sampler, src, clips)),
                          size=max(8, 4 * workers))
        return
    step = max(1, MAX_FRAMES_PER_READ // max(1, frames_per_clip))
    chunks = [(src, clips[i:i + step]) for src, clips in groups for i in range(0, len(clips), step)]
    timeout = decode_timeout_s()
    it = iter(chunks)
    # range first: zip stops on it without pulling (and losing) one more chunk from `it`
    window = [(c, _in_daemon(decode_source, root, sampler, *c)) for _, c in zip(range(max(2, 2 * workers)), it)]
    while window:
        (src, clips), fut = window.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            window.append((nxt, _in_daemon(decode_source, root, sampler, *nxt)))
        try:
            yield from fut.result(timeout=timeout)
        except TimeoutError:  # a decoder stuck inside decord: give up on this chunk, keep going
            for c in clips:
                yield c, None, f"decoding timed out after {timeout:.0f} s"


def decode_timeout_s() -> float:
    """How long one chunk of clips (at most 256 frames) may take to decode (``CURATE_DECODE_TIMEOUT_S``)."""
    import os

    return float(os.environ.get("CURATE_DECODE_TIMEOUT_S", "300"))


def _in_daemon(fn, *args):
    """Run ``fn`` in a daemon thread: a call that never returns (a hung decoder) cannot hang the process's exit,
    as a thread pool's worker would."""
    import threading
    from concurrent.futures import Future

    fut: Future = Future()

    def target() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # handed to the consumer
            fut.set_exception(e)

    threading.Thread(target=target, daemon=True).start()
    return fut


def read_ahead(*producers: Iterator, size: int) -> Iterator:
    """Run each iterator of ``producers`` in its own thread, up to ``size`` items ahead of the consumer
    (items of several producers interleave as they come). When the consumer stops, the producers are
    closed (a producer's ``finally`` kills its decoder)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def produce(items: Iterator) -> None:
        try:
            for item in items:
                if stop.is_set():
                    break
                q.put(item)
        except BaseException as e:  # surfaced in the consumer
            q.put(e)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
            q.put(done)

    threads = [threading.Thread(target=produce, args=(p,), daemon=True) for p in producers]
    for t in threads:
        t.start()
    finished = 0
    try:
        while finished < len(threads):
            item = q.get()
            if item is done:
                finished += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        while any(t.is_alive() for t in threads):
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass


def batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


#: frames for encoders that do not ask the decoder for a size, with decoder=ffmpeg: shorter side in px
FFMPEG_SAMPLE_SHORT_SIDE = 256


def sample_stream(sampler: Sampler, width: int, height: int):
    """The decoded stream encoders sample from with ``decoder=ffmpeg``: I420 (yuv420p), area-scaled in ffmpeg
    to the encoder's decode size (or a shorter side of 256 px), even dimensions; only sampled frames are
    converted to RGB (:func:`curate.media.video.yuv_to_rgb`). `curate embed` and `curate process` both use it,
    which is what makes their embeddings equal.

    Why YUV: scaling in the source's own YUV and converting only the few sampled frames costs ffmpeg a
    fraction of an RGB conversion of every frame, and half the bytes through the pipe."""
    w, h = sampler.decode_size(width, height) or scaled_size(width, height, FFMPEG_SAMPLE_SHORT_SIDE)
    # area: an antialiased downscale, cheaper than bicubic
    return Stream(max(2, int(w) // 2 * 2), max(2, int(h) // 2 * 2), "yuv420p", "area")


def clip_frame_indices(sampler: Sampler, clip: dict, fps: float, n_decodable: int | None = None) -> list[int]:
    """Absolute frame indices a sampler wants from one clip."""
    a, b = int(clip["start_frame"]), int(clip["end_frame"])
    if n_decodable is not None:
        b = min(b, n_decodable)
    if b <= a:
        raise MediaError(f"clip frames {a}-{clip['end_frame']} are past the decodable end ({n_decodable} frames)")
    return [a + i for i in sampler.frame_indices(b - a, fps)]


def decode_source_ffmpeg(root: Root, sampler: Sampler, src: dict, clips: list[dict]) -> Iterator[tuple[dict, Any, str | None]]:
    """One sequential ffmpeg decode of a source; yields each clip as soon as its last sampled frame is read,
    so memory holds the sampled frames of the open clips only."""
    clips = sorted(clips, key=lambda c: int(c["start_frame"]))
    fps = float(src["fps"])
    wants: list[list[int]] = []
    for c in clips:
        try:
            wants.append(clip_frame_indices(sampler, c, fps))
        except MediaError as e:
            wants.append([])
            yield c, None, str(e)
    by_frame: dict[int, list[int]] = {}
    for ci, idx in enumerate(wants):
        for f in set(idx):
            by_frame.setdefault(f, []).append(ci)
    got: dict[int, dict[int, np.ndarray]] = {}
    last = {ci: max(idx) for ci, idx in enumerate(wants) if idx}
    emitted: set[int] = {ci for ci, idx in enumerate(wants) if not idx}
    previous = None
    try:
        stream = sample_stream(sampler, int(src["width"]), int(src["height"]))
        for f, frame in enumerate(decode_frames(root.media_file(src["media_path"]), stream)):
            previous = frame
            for ci in by_frame.get(f, ()):
                got.setdefault(ci, {})[f] = frame
            for ci in [ci for ci, lf in last.items() if lf <= f and ci not in emitted]:
                emitted.add(ci)
                yield clips[ci], _prep(sampler, wants[ci], got.pop(ci, {}), previous), None
            if len(emitted) == len(clips):
                return  # every clip served: stop decoding (kills ffmpeg)
    except Exception as e:  # undecodable, killed by the watchdog, ...
        for ci, c in enumerate(clips):
            if ci not in emitted:
                emitted.add(ci)
                yield c, None, str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        return
    for ci, c in enumerate(clips):  # the stream ended early: clamp to the last frame, as get_frames does
        if ci not in emitted:
            if previous is None:
                yield c, None, "no frame could be decoded"
            else:
                yield c, _prep(sampler, wants[ci], got.pop(ci, {}), previous), None


def _prep(sampler: Sampler, idx: list[int], frames: dict[int, np.ndarray], fallback: np.ndarray):
    """The sampler's input from I420 frames (converted to RGB here, only the sampled ones)."""
    return sampler.preprocess(np.stack([yuv_to_rgb(frames.get(i, fallback)) for i in idx]))


def split_command(path, streams: list, fds: list[int], *, skip_loop_filter: bool = False) -> list[str]:
    """The ffmpeg command that decodes ``path`` once and writes each of ``streams`` to its pipe ``fds[i]``
    (``split``, then each copy scaled and converted to its stream's size and pixel format)."""
    k = len(streams)
    graph = [f"[0:v:0]split={k}" + "".join(f"[in{i}]" for i in range(k))]
    graph += [f"[in{i}]scale={s.width}:{s.height}:flags={s.flags},format={s.pix_fmt}[out{i}]" for i, s in enumerate(streams)]
    cmd = ["ffmpeg", "-nostdin", "-v", "error", *(["-skip_loop_filter", "all"] if skip_loop_filter else []),
           "-i", str(Path(path).resolve()), "-filter_complex", ";".join(graph)]  # absolute: never read as an option
    for i, (s, w) in enumerate(zip(streams, fds)):
        cmd += ["-map", f"[out{i}]", "-f", "rawvideo", "-pix_fmt", s.pix_fmt, f"pipe:{w}"]
        try:
            fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
        except OSError:  # a lower /proc/sys/fs/pipe-max-size: the default pipe works, a little slower
            pass
    return cmd


def decode_streams(path, streams: list, *, skip_loop_filter: bool = False, timeout_s: float | None = None,
                   duration_s: float | None = None) -> Iterator[tuple[np.ndarray, ...]]:
    """Decode the first video stream ONCE into several outputs and yield one tuple of frames per frame.

    One ffmpeg decodes, ``split``s the decoded frames and scales each copy to its :class:`curate.media.video.Stream`
    (e.g. the encoder's I420 frames, the scene detector's 256 px BGR and TransNetV2's 48x27 RGB): each
    output has its own pipe, read as the frames come (``select``), so no output can stall the others.
    With one stream this is :func:`curate.media.video.decode_frames`. A watchdog kills ffmpeg after ``timeout_s``
    (default: 60 s plus 3x the duration); stopping the iteration early kills ffmpeg.
    """
    if len(streams) == 1:
        for frame in decode_frames(path, streams[0], skip_loop_filter=skip_loop_filter, timeout_s=timeout_s,
                                   duration_s=duration_s):
            yield (frame,)
        return
    if duration_s is None:
        duration_s = probe(path).duration_s
    for s in streams:
        if s.pix_fmt == "yuv420p" and (s.width % 2 or s.height % 2):
            raise ValueError(f"yuv420p frames need even dimensions, not {s.width}x{s.height}")
    k = len(streams)
    pipes = [os.pipe() for _ in streams]
    cmd = split_command(path, streams, [w for _, w in pipes], skip_loop_filter=skip_loop_filter)
    err = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, pass_fds=[w for _, w in pipes])
    finally:
        for _, w in pipes:
            os.close(w)
    readers = [r for r, _ in pipes]
    limit = timeout_s if timeout_s is not None else 60 + 3 * duration_s
    timer = threading.Timer(limit, proc.kill)
    timer.start()
    sizes = [int(np.prod(s.frame_shape)) for s in streams]
    bufs = [bytearray() for _ in streams]
    queues: list[list[np.ndarray]] = [[] for _ in streams]
    sel = selectors.DefaultSelector()
    for i, r in enumerate(readers):
        sel.register(r, selectors.EVENT_READ, i)
    finished = False
    try:
        open_ = k
        while open_:
            for key, _ in sel.select():
                i = key.data
                chunk = os.read(key.fd, max(PIPE_BYTES, sizes[i]))
                if not chunk:  # this output ended (a partial last frame is dropped)
                    sel.unregister(key.fd)
                    open_ -= 1
                    continue
                bufs[i] += chunk
                while len(bufs[i]) >= sizes[i]:
                    queues[i].append(np.frombuffer(bytes(bufs[i][:sizes[i]]), np.uint8).reshape(streams[i].frame_shape))
                    del bufs[i][:sizes[i]]
            while all(queues):
                yield tuple(q.pop(0) for q in queues)
        finished = True
    finally:
        if proc.poll() is None and not finished:
            proc.kill()
        sel.close()
        for r in readers:
            os.close(r)
        message = ffmpeg_reap(proc, timer, err)
    ffmpeg_check(proc, message, limit)
