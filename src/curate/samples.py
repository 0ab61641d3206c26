"""Synthetic videos with hard cuts at known frames, made with ffmpeg's lavfi sources.

Used by `make demo`, the tests and the benchmarks: the expected scene boundaries are exact, so
scene detection and cutting can be checked to the frame.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

#: lavfi sources that differ strongly from each other (each makes a visually distinct shot). Each is calm
#: within itself (ContentDetector score < 5 between its frames; `life`/`cellauto` are not: ~27, a cut per frame)
#: and draws the same frames on every run: lavfi's `gradients`, `life` and `cellauto` do not (their colours or cells
#: are random, `gradients` even with a `seed`), so the gradient is a `geq` expression of the pixel and frame number.
SHOTS = {
    "testsrc2": "testsrc2=size={w}x{h}:rate={fps}",
    "mandelbrot": "mandelbrot=size={w}x{h}:rate={fps}",
    "smptebars": "smptebars=size={w}x{h}:rate={fps}",
    "rgbtestsrc": "rgbtestsrc=size={w}x{h}:rate={fps}",
    "red": "color=c=red:size={w}x{h}:rate={fps}",
    "blue": "color=c=blue:size={w}x{h}:rate={fps}",
    "gradient": "nullsrc=size={w}x{h}:rate={fps},geq=r='255*X/W':g='255*Y/H':b='255*abs(mod(N/100+X/W\\,2)-1)'",
}

CAPTIONS = {
    "testsrc2": "a colorful test pattern with a moving counter",
    "mandelbrot": "a zoom into a glowing mandelbrot fractal",
    "smptebars": "television color bars",
    "rgbtestsrc": "red green and blue stripes",
    "red": "a plain red screen",
    "blue": "a plain blue screen",
    "gradient": "a slowly shifting color gradient",
}


def make_video(path: Path, shots: Sequence[tuple[str, int]], *, fps: int = 25, size: tuple[int, int] = (320, 240),
               audio: bool = False, codec: str = "libx264", gop: int | None = None) -> list[tuple[int, int]]:
    """Write a video of ``shots`` = [(source name, frames), ...] joined by hard cuts; returns the frame ranges."""
    w, h = size
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    for name, _ in shots:
        cmd += ["-f", "lavfi", "-i", SHOTS[name].format(w=w, h=h, fps=fps)]  # trimmed to its frames below
    total = sum(n for _, n in shots)
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={total / fps:.6f}"]
    chains = "".join(f"[{i}:v]trim=end_frame={n},setpts=PTS-STARTPTS,format=yuv420p[v{i}];" for i, (_, n) in enumerate(shots))
    concat = "".join(f"[v{i}]" for i in range(len(shots))) + f"concat=n={len(shots)}:v=1:a=0[out]"
    cmd += ["-filter_complex", chains + concat, "-map", "[out]"]
    if audio:
        cmd += ["-map", f"{len(shots)}:a", "-c:a", "aac", "-shortest"]
    cmd += ["-c:v", codec, "-r", str(fps), "-pix_fmt", "yuv420p"]
    if codec == "libx264":
        cmd += ["-preset", "veryfast", "-crf", "20"]
        if gop:
            cmd += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd += [str(path.resolve())]
    subprocess.run(cmd, check=True, capture_output=True)
    ranges, start = [], 0
    for _, n in shots:
        ranges.append((start, start + n))
        start += n
    return ranges


DEMO_VIDEOS = {
    "shapes_and_fractals": [("testsrc2", 75), ("mandelbrot", 100), ("smptebars", 60)],
    "patterns": [("gradient", 90), ("rgbtestsrc", 70), ("blue", 80)],
    "colors": [("red", 50), ("gradient", 110), ("testsrc2", 60)],
    "one_long_shot": [("mandelbrot", 300)],
}

DEMO_CAPTIONS = {
    "shapes_and_fractals": "a test pattern, then a fractal zoom, then television color bars",
    "patterns": "a color gradient, then red green and blue stripes, then a blue screen",
    "colors": "a red screen and a shifting color gradient",
    "one_long_shot": "a long zoom into a glowing mandelbrot fractal",
}


def make_demo_inputs(directory: Path) -> Path:
    """Write the demo videos and a sources.csv (url, caption, title) listing them; returns the CSV path."""
    import csv

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, shots in DEMO_VIDEOS.items():
        p = directory / f"{name}.mp4"
        if not p.exists():
            make_video(p, shots, audio=True)
        rows.append({"url": str(p.resolve()), "caption": DEMO_CAPTIONS[name], "title": name.replace("_", " ")})
    csv_path = directory / "sources.csv"
    with open(csv_path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["url", "caption", "title"])
        wr.writeheader()
        wr.writerows(rows)
    return csv_path
