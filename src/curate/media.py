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
