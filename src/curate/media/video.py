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
    has_audio: bool = False


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
    has_audio = any(s.get("codec_type") == "audio" for s in info.get("streams", []))
    return Probe(duration, fps, width, height, v.get("codec_name", ""), num_frames, rotation, has_audio)


#: how a clip is cut: ``accurate`` re-encodes every clip (frame-accurate), ``copy`` stream-copies every clip
#: (exact only at keyframes), ``auto`` stream-copies the clips whose both ends fall on keyframes (exact, checked)
#: and re-encodes the others
CUT_MODES = ("accurate", "copy", "auto")
#: the re-encode: libx264 at this preset and CRF (chosen by bench/bench_publish.py: README "Speed")
PRESET = "veryfast"
CRF = 18
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass(frozen=True)
class Encoding:
    """How a re-encoded clip is written: libx264 ``preset`` and ``crf``, ``threads`` per ffmpeg (0: x264's own
    choice, ~1.5x the cores); audio is AAC."""

    preset: str = PRESET
    crf: int = CRF
    threads: int = 0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise CurateError(f"preset must be one of {', '.join(PRESETS)} (libx264), not {self.preset!r}")
        if not 0 <= int(self.crf) <= 51:
            raise CurateError(f"crf must be 0..51 (libx264: 18 is visually lossless, 23 its default), not {self.crf}")

    def video_args(self) -> list[str]:
        return ["-c:v", "libx264", "-preset", self.preset, "-crf", str(int(self.crf)), "-pix_fmt", "yuv420p",
                "-threads", str(int(self.threads))]

    def label(self) -> str:
        return f"H.264 (libx264 -preset {self.preset} -crf {int(self.crf)})"


def keyframes(path: Path, timeout: float = PROBE_TIMEOUT_S) -> list[float]:
    """Where a stream copy of the first video stream can cut exactly: the presentation times (s) of its
    keyframes, from its packets (nothing is decoded), on the time line that ``ffmpeg -ss`` seeks on (from
    the file's start time, as a clip's ``start_s`` is given to it); the last entry is the stream's end.
    Empty unless the stream is H.264 in 8-bit 4:2:0, what a re-encode writes, so that every published clip
    is H.264 yuv420p either way."""
    cmd = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
           "format=start_time:stream=codec_name,pix_fmt:packet=pts_time,duration_time,flags", "-of", "json=compact=1",
           "-i", _abs(path)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        raise MediaError(f"ffprobe timed out after {timeout:.0f} s") from None
    if out.returncode != 0:
        raise MediaError(f"ffprobe could not list the packets ({(out.stderr.strip().splitlines() or ['?'])[-1][:300]})")
    info = json.loads(out.stdout or "{}")
    stream = (info.get("streams") or [{}])[0]
    if (stream.get("codec_name"), stream.get("pix_fmt")) != ("h264", "yuv420p"):
        return []
    first = float(info.get("format", {}).get("start_time") or 0.0)
    keys, end = [], None
    for pkt in info.get("packets", []):
        try:
            t = float(pkt["pts_time"])
        except (KeyError, ValueError):
            continue
        end = max(end or t, t + float(pkt.get("duration_time") or 0.0))
        if pkt.get("flags", "").startswith("K"):
            keys.append(t - first)
    return sorted(keys) + [end - first] if end is not None else []


def copy_exact(keys: list[float], start_s: float, num_frames: int, fps: float) -> bool:
    """Whether a stream copy of ``num_frames`` frames from ``start_s`` is exact: the clip starts on a keyframe
    and ends on one (the next GOP's first frame) or at the end of the stream (``keys`` from :func:`keyframes`)."""
    import bisect

    if len(keys) < 2:
        return False
    tol = 0.5 / fps
    end_s = start_s + num_frames / fps

    def on_key(t: float) -> bool:
        i = bisect.bisect_left(keys, t - tol, 0, len(keys) - 1)
        return i < len(keys) - 1 and abs(keys[i] - t) <= tol

    return on_key(start_s) and (on_key(end_s) or abs(end_s - keys[-1]) <= tol)


def _run_cut(cmd: list[str], tmps: list[Path], timeout: float) -> str:
    """Run one ffmpeg cut writing ``tmps``; its standard output (``-progress pipe:1``'s lines), or MediaError."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        for t in tmps:
            t.unlink(missing_ok=True)
        raise MediaError(f"ffmpeg cut timed out after {timeout:.0f} s") from None
    if out.returncode != 0 or not all(t.exists() and t.stat().st_size > 0 for t in tmps):
        for t in tmps:
            t.unlink(missing_ok=True)
        msg = (out.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise MediaError(f"ffmpeg could not cut the clip ({msg[:300]})")
    return out.stdout


def video_packets(path: Path, timeout: float = PROBE_TIMEOUT_S) -> int:
    """How many packets (= frames, for H.264) the first video stream holds (counted by ffprobe, no decode)."""
    cmd = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
           "stream=nb_read_packets", "-of", "csv=p=0", "-i", _abs(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    try:
        return int(out.stdout.strip().split(",")[0])
    except ValueError:
        return -1


def cut_clip(src: Path, dst: Path, start_s: float, num_frames: int, fps: float, *, mode: str = "accurate",
             encoding: Encoding | None = None, keys: list[float] | None = None, crf: int | None = None,
             timeout: float = CUT_TIMEOUT_S) -> str:
    """Cut ``num_frames`` frames starting at ``start_s`` from ``src`` into ``dst`` (mp4); returns how it was
    cut: ``"encode"`` or ``"copy"``.

    ``accurate`` re-encodes (``encoding``, default H.264 at :data:`PRESET`/:data:`CRF`; frame-accurate: input
    seek + exact frame count); ``copy`` stream-copies, which is exact only when the cut points fall on
    keyframes (fast, no quality loss); ``auto`` stream-copies when :func:`copy_exact` says the copy is exact
    (``keys``: the source's :func:`keyframes`, listed here when not given) and the copy holds exactly
    ``num_frames`` frames (as ffmpeg reports the packets it wrote), and re-encodes otherwise.
    """
    if mode not in CUT_MODES:
        raise CurateError(f"cut must be one of {', '.join(CUT_MODES)}, not {mode!r}")
    encoding = encoding or Encoding(crf=crf if crf is not None else CRF)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".tmp-{dst.name}")
    head = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{start_s:.6f}", "-i", _abs(src)]
    tail = ["-movflags", "+faststart", "-f", "mp4", _abs(tmp)]
    if mode == "auto":
        if keys is None:
            keys = keyframes(src)
        if copy_exact(keys, start_s, num_frames, fps):
            # -frames:v counts packets in decode order: from a keyframe to the next one that is the GOP's frames.
            # No -avoid_negative_ts: shifting B-frames' negative dts to 0 would start the video ~3 frames late
            # (a decoder writing constant-rate frames repeats the first); the mp4 muxer keeps them (edit list)
            progress = _run_cut(head + ["-frames:v", str(num_frames), "-t", f"{num_frames / fps:.6f}", "-map",
                                        "0:v:0", "-map", "0:a:0?", "-c", "copy", "-progress", "pipe:1"] + tail,
                                [tmp], timeout)
            written = [line[6:] for line in progress.splitlines() if line.startswith("frame=")]
            if written and written[-1].strip() == str(num_frames):  # the video packets ffmpeg wrote
                tmp.replace(dst)
                return "copy"
            tmp.unlink(missing_ok=True)  # not what it looked like (an open GOP, say): re-encode
        mode = "accurate"
    if mode == "copy":
        cmd = head + ["-t", f"{num_frames / fps:.6f}", "-map", "0:v:0", "-map", "0:a:0?", "-c", "copy",
                      "-avoid_negative_ts", "make_zero"]
    else:
        cmd = head + ["-frames:v", str(num_frames), "-map", "0:v:0", "-map", "0:a:0?", *encoding.video_args(),
                      "-c:a", "aac", "-t", f"{num_frames / fps:.6f}"]
    _run_cut(cmd + tail, [tmp], timeout)
    tmp.replace(dst)
    return "copy" if mode == "copy" else "encode"


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
    """The raw output of :func:`decode_frames`: frames scaled to ``width`` x ``height`` in ``pix_fmt``."""

    width: int
    height: int
    pix_fmt: str = "rgb24"  # rgb24 for models, bgr24 for OpenCV / PySceneDetect, yuv420p (I420) for both
    flags: str = "bicubic"  # swscale algorithm (fast_bilinear for scene detection)

    @property
    def frame_shape(self) -> tuple[int, ...]:
        if self.pix_fmt == "yuv420p":  # I420 planes stacked as OpenCV reads them: Y, then U and V
            return (self.height * 3 // 2, self.width)
        return (self.height, self.width, 3)


def yuv_to_rgb(frame):
    """An I420 frame from a ``yuv420p`` :class:`Stream` as uint8 RGB [H, W, 3] (BT.601, as swscale's default)."""
    import cv2

    return cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_I420)


def yuv_to_bgr(frame, size: tuple[int, int] | None = None):
    """An I420 frame as uint8 BGR (what OpenCV and PySceneDetect read), resized to ``size`` = (w, h) if given.

    Resizing the planes before converting costs a third of converting then resizing (a scene detector
    sees every frame, so this is per frame)."""
    import cv2
    import numpy as np

    if size is not None and tuple(size) != (frame.shape[1], frame.shape[0] * 2 // 3):
        (w, h), W, H = size, frame.shape[1], frame.shape[0] * 2 // 3
        out = np.empty((h * 3 // 2, w), np.uint8)
        for (pw, ph), (qw, qh), a, b in (((W, H), (w, h), 0, 0), ((W // 2, H // 2), (w // 2, h // 2), W * H, w * h),
                                         ((W // 2, H // 2), (w // 2, h // 2), W * H * 5 // 4, w * h * 5 // 4)):
            # planes by byte offset: with a height not divisible by 4, U and V do not start on a row
            cv2.resize(frame.reshape(-1)[a:a + pw * ph].reshape(ph, pw), (qw, qh),
                       dst=out.reshape(-1)[b:b + qw * qh].reshape(qh, qw), interpolation=cv2.INTER_LINEAR)
        frame = out
    return cv2.cvtColor(frame, cv2.COLOR_YUV2BGR_I420)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Even dimensions whose shorter side is ``short_side`` (never larger than the source)."""
    s = min(short_side, width, height)
    if width <= height:
        w, h = s, height * s / width
    else:
        w, h = width * s / height, s
    return max(2, int(round(w / 2)) * 2), max(2, int(round(h / 2)) * 2)


#: bytes of decoded frames the pipe from ffmpeg holds, so ffmpeg decodes on while Python handles a frame
PIPE_BYTES = 1 << 20


def ffmpeg_reap(proc, timer, err) -> list[str]:
    """After a watched ffmpeg decode (its pipes closed): wait for it, stop its watchdog, and return the lines
    it wrote to ``err`` (the file its stderr went to), closing that file."""
    proc.wait()
    timer.cancel()
    err.seek(0)
    message = err.read().decode(errors="replace").strip().splitlines()
    err.close()
    return message


def ffmpeg_check(proc, message: list[str], limit: float) -> None:
    """Raise :class:`MediaError` for a watched decode that failed: killed by its watchdog after ``limit``
    seconds, or ffmpeg's own last message."""
    if proc.returncode != 0:
        if proc.returncode < 0:
            raise MediaError(f"decoding took longer than {limit:.0f} s (killed)")
        raise MediaError(f"ffmpeg could not decode the video ({(message or ['unknown error'])[-1][:300]})")


def decode_frames(path: Path, stream: Stream, *, skip_loop_filter: bool = False, timeout_s: float | None = None,
                  duration_s: float | None = None):
    """Decode the first video stream ONCE and yield every frame as a uint8 array of ``stream.frame_shape``.

    ffmpeg decodes (threaded) and scales in C; frames come through one pipe (enlarged, so that decoding
    runs ahead of the consumer) straight into numpy arrays. A watchdog kills ffmpeg after ``timeout_s``
    (default: 60 s plus 3x the duration), so a file that makes the decoder hang cannot hang a stage.
    Stopping the iteration early kills ffmpeg. ffmpeg's messages go to a file, never to a pipe that
    could fill up and stall it.
    """
    import fcntl
    import os
    import tempfile
    import threading

    import numpy as np

    if duration_s is None:
        duration_s = probe(path).duration_s
    if stream.pix_fmt == "yuv420p" and (stream.width % 2 or stream.height % 2):
        raise ValueError(f"yuv420p frames need even dimensions, not {stream.width}x{stream.height}")
    cmd = ["ffmpeg", "-nostdin", "-v", "error"]
    if skip_loop_filter:
        cmd += ["-skip_loop_filter", "all"]
    # format= after scale: swscale resizes in the source's YUV (fast) and converts once, at the small size
    cmd += ["-i", _abs(path), "-filter_complex",
            f"[0:v:0]scale={stream.width}:{stream.height}:flags={stream.flags},format={stream.pix_fmt}[o]",
            "-map", "[o]", "-f", "rawvideo", "-pix_fmt", stream.pix_fmt, "pipe:1"]
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except OSError:  # a lower /proc/sys/fs/pipe-max-size: the default pipe works, a little slower
        pass
    err = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(cmd, stdout=w, stderr=err)
    finally:
        os.close(w)
    f = os.fdopen(r, "rb", buffering=0)
    limit = timeout_s if timeout_s is not None else 60 + 3 * duration_s
    timer = threading.Timer(limit, proc.kill)
    timer.start()
    shape = stream.frame_shape
    size = int(np.prod(shape))
    finished = False
    try:
        while True:
            frame = np.empty(shape, np.uint8)
            view, got = memoryview(frame).cast("B"), 0
            while got < size:
                k = f.readinto(view[got:])
                if not k:
                    break
                got += k
            if got < size:  # end of stream (a partial last frame is dropped)
                break
            yield frame
        finished = True
    finally:
        if proc.poll() is None and not finished:
            proc.kill()
        f.close()
        message = ffmpeg_reap(proc, timer, err)
    ffmpeg_check(proc, message, limit)
