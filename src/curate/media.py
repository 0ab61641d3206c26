"""ffprobe/ffmpeg/decord wrappers. Paths given to ffmpeg are always our own files under the root,
absolute (so they can never be read as an option), and passed after ``-i``/as the output."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from curate.errors import CurateError

PROBE_TIMEOUT_S = 60
CUT_TIMEOUT_S = 600


def require_ffmpeg() -> None:
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise CurateError(f"{tool} was not found on PATH: install ffmpeg (apt-get install ffmpeg, or `make install`).")


@dataclass
class Probe:
    duration_s: float
    fps: float
    width: int
    height: int
    codec: str
    num_frames: int
    rotation: int = 0


class MediaError(Exception):
    """The media cannot be used: no video stream, unreadable, corrupt."""


def _abs(path: Path) -> str:
    s = str(Path(path).resolve())
    assert s.startswith("/"), s
    return s


def _rate(s: str | None) -> float:
    if not s or s in ("0/0", "0"):
        return 0.0
    if "/" in s:
        a, b = s.split("/", 1)
        return float(a) / float(b) if float(b) else 0.0
    return float(s)


def probe(path: Path, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    """Duration, fps, size, codec and frame count of the first video stream."""
    cmd = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", "-i", _abs(path)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        raise MediaError(f"ffprobe timed out after {timeout:.0f} s") from None
    if out.returncode != 0:
        msg = (out.stderr.strip().splitlines() or ["unknown error"])[-1].replace(_abs(path) + ": ", "")
        raise MediaError(f"not a readable media file ({msg[:300]})")
    info = json.loads(out.stdout or "{}")
    video = [s for s in info.get("streams", []) if s.get("codec_type") == "video"
             and not s.get("disposition", {}).get("attached_pic")]
    if not video:
        kinds = sorted({s.get("codec_type", "?") for s in info.get("streams", [])})
        raise MediaError(f"no video stream (streams: {', '.join(kinds) or 'none'})")
    v = video[0]
    fps = _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate"))
    duration = float(v.get("duration") or info.get("format", {}).get("duration") or 0.0)
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    if not (fps > 0 and duration > 0 and width > 0 and height > 0):
        raise MediaError(f"video stream without usable fps/duration/size (fps={fps}, duration={duration}, {width}x{height})")
    nb = v.get("nb_frames")
    num_frames = int(nb) if nb and str(nb).isdigit() and int(nb) > 0 else int(round(duration * fps))
    rotation = 0
    for sd in v.get("side_data_list", []) or []:
        if "rotation" in sd:
            rotation = int(sd["rotation"])
    if "rotate" in v.get("tags", {}):
        rotation = int(v["tags"]["rotate"])
    return Probe(duration, fps, width, height, v.get("codec_name", ""), num_frames, rotation)


def cut_clip(src: Path, dst: Path, start_s: float, num_frames: int, fps: float, *, mode: str = "accurate",
             crf: int = 18, timeout: float = CUT_TIMEOUT_S) -> None:
    """Cut ``num_frames`` frames starting at ``start_s`` from ``src`` into ``dst`` (mp4).

    ``accurate`` re-encodes (H.264, frame-accurate: input seek + exact frame count); ``copy`` stream-copies,
    which is exact only when the cut points fall on keyframes (fast, no quality loss).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".tmp-{dst.name}")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{start_s:.6f}", "-i", _abs(src)]
    if mode == "copy":
        cmd += ["-t", f"{num_frames / fps:.6f}", "-map", "0:v:0", "-map", "0:a:0?", "-c", "copy",
                "-avoid_negative_ts", "make_zero"]
    else:
        cmd += ["-frames:v", str(num_frames), "-map", "0:v:0", "-map", "0:a:0?", "-c:v", "libx264",
                "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p", "-c:a", "aac",
                "-t", f"{num_frames / fps:.6f}"]
    cmd += ["-movflags", "+faststart", "-f", "mp4", _abs(tmp)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise MediaError(f"ffmpeg cut timed out after {timeout:.0f} s") from None
    if out.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        msg = (out.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise MediaError(f"ffmpeg could not cut the clip ({msg[:300]})")
    tmp.replace(dst)


def open_video(path: Path, size: tuple[int, int] | None = None, num_threads: int = 0):
    """A decord VideoReader (frames as uint8 RGB numpy arrays), optionally resized by the decoder."""
    import decord

    decord.bridge.set_bridge("native")
    kwargs = {"num_threads": num_threads}
    if size is not None:
        kwargs.update(width=int(size[0]), height=int(size[1]))
    try:
        return decord.VideoReader(_abs(path), **kwargs)
    except Exception as e:  # decord raises DECORDError (a RuntimeError) with long messages
        raise MediaError(f"decord cannot open the video ({str(e).splitlines()[0][:200]})") from e


def get_frames(vr, indices: list[int]):
    """Frames at ``indices`` as one uint8 array [N, H, W, 3] (RGB)."""
    n = len(vr)
    idx = [min(max(0, int(i)), n - 1) for i in indices]
    try:
        return vr.get_batch(idx).asnumpy()
    except Exception as e:
        raise MediaError(f"decoding frames failed ({str(e).splitlines()[0][:200]})") from e


@dataclass
class Stream:
    """One raw output of :func:`decode_streams`: frames scaled to ``width`` x ``height`` in ``pix_fmt``."""

    width: int
    height: int
    pix_fmt: str = "rgb24"  # rgb24 for models, bgr24 for OpenCV / PySceneDetect
    flags: str = "bicubic"  # swscale algorithm (fast_bilinear for scene detection)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Even dimensions whose shorter side is ``short_side`` (never larger than the source)."""
    s = min(short_side, width, height)
    if width <= height:
        w, h = s, height * s / width
    else:
        w, h = width * s / height, s
    return max(2, int(round(w / 2)) * 2), max(2, int(round(h / 2)) * 2)


def decode_streams(path: Path, streams: list[Stream], *, skip_loop_filter: bool = False,
                   timeout_s: float | None = None, duration_s: float | None = None, base: int | None = None):
    """Decode the first video stream ONCE and yield, per frame, a tuple with one array per ``streams`` entry.

    ffmpeg decodes (threaded) and scales each output in C; each output has its own pipe, read by its
    own thread, so neither can stall the other. A watchdog kills ffmpeg after ``timeout_s`` (default:
    60 s plus 3x the duration), so a file that makes the decoder hang cannot hang a stage. Stopping the
    iteration early kills ffmpeg.
    """
    import os
    import queue
    import threading

    import numpy as np

    if duration_s is None:
        duration_s = probe(path).duration_s
    n = len(streams)
    cmd = ["ffmpeg", "-nostdin", "-v", "error"]
    if skip_loop_filter:
        cmd += ["-skip_loop_filter", "all"]
    cmd += ["-i", _abs(path)]
    chains = [f"scale={s.width}:{s.height}:flags={s.flags},format={s.pix_fmt}" for s in streams]
    head = "[0:v:0]"
    if base is not None:  # scale from full resolution once (stream `base`); the others are scaled from it
        b = streams[base]
        head = f"[0:v:0]scale={b.width}:{b.height}:flags={b.flags},"
        chains[base] = f"format={b.pix_fmt}"
    if n == 1:
        graph = head + chains[0] + "[o0]"
    else:
        graph = head + f"split={n}" + "".join(f"[i{i}]" for i in range(n)) + ";" + ";".join(
            f"[i{i}]{c}[o{i}]" for i, c in enumerate(chains))
    cmd += ["-filter_complex", graph]
    pipes = [os.pipe() for _ in range(n - 1)]
    for i, s in enumerate(streams):
        target = "pipe:1" if i == 0 else f"pipe:{pipes[i - 1][1]}"
        cmd += ["-map", f"[o{i}]", "-f", "rawvideo", "-pix_fmt", s.pix_fmt, target]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=[w for _, w in pipes])
    for _, w in pipes:
        os.close(w)  # ffmpeg holds the write ends now
    files = [proc.stdout, *[os.fdopen(r, "rb", buffering=0) for r, _ in pipes]]
    queues: list[queue.Queue] = [queue.Queue(maxsize=16) for _ in range(n)]
    stop = threading.Event()

    def reader(f, q, s: Stream) -> None:
        size = s.width * s.height * 3
        try:
            while not stop.is_set():
                buf = f.read(size)
                while buf is not None and 0 < len(buf) < size:  # raw pipes may return short reads
                    more = f.read(size - len(buf))
                    if not more:
                        break
                    buf += more
                if not buf or len(buf) < size:
                    break
                q.put(np.frombuffer(buf, np.uint8).reshape(s.height, s.width, 3))
        finally:
            q.put(None)

    threads = [threading.Thread(target=reader, args=(f, q, s), daemon=True) for f, q, s in zip(files, queues, streams)]
    for t in threads:
        t.start()
    limit = timeout_s if timeout_s is not None else 60 + 3 * duration_s
    timer = threading.Timer(limit, proc.kill)
    timer.start()
    finished = False
    try:
        while True:
            frames = [q.get() for q in queues]
            if any(f is None for f in frames):
                break
            yield tuple(frames)
        finished = True
    finally:
        stop.set()
        for q in queues:  # unblock readers waiting to put
            while not q.empty():
                q.get_nowait()
        if proc.poll() is None and not finished:
            proc.kill()
        proc.wait()
        timer.cancel()
        for f in files[1:]:
            f.close()
    if finished:
        if proc.returncode != 0:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
            if proc.returncode < 0:
                raise MediaError(f"decoding took longer than {limit:.0f} s (killed)")
            raise MediaError(f"ffmpeg could not decode the video ({(err or ['unknown error'])[-1][:300]})")
