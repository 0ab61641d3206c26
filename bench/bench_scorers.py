"""Clips per second of the pixel scorers on CPU: text (detection, and with recognition), nsfw, quality, motion.

    .venv/bin/python bench/bench_scorers.py [--sources 4] [--shots 6] [--shot-s 2] [--size 640x360] [--threads 0]
                                            [--only quality,motion,nsfw,text,text-rec]

Makes ``--sources`` videos of ``--shots`` shots of ``--shot-s`` seconds each (lavfi test patterns, one of them with a burned-in
subtitle line), ingests and splits them, then times each scorer's ``compute`` over every clip (models
loaded before the clock starts; decoding is included, as in ``curate score``). Also times one plain
ffmpeg decode of every source, to put the cheap scorers' cost in decodes. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

SHOTS = ["mandelbrot", "testsrc2", "smptebars", "gradient", "rgbtestsrc", "mandelbrot"]


def make_sources(d: Path, n: int, shots: int, size: tuple[int, int], frames: int) -> Path:
    from curate.samples import make_video

    lst = d / "sources.csv"
    rows = ["url,caption"]
    for i in range(n):
        p = d / f"v{i}.mp4"
        make_video(p, [(SHOTS[(i + k) % len(SHOTS)], frames) for k in range(shots)], size=size)
        if i == 0:  # one source with a subtitle line over every shot
            font = subprocess.run(["fc-match", "-f", "%{file}", "sans"], capture_output=True, text=True).stdout
            if font and Path(font).is_file():
                q = d / "v0s.mp4"
                subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(p), "-vf",
                                f"drawtext=fontfile={font}:text='a subtitle line for the benchmark':fontsize="
                                f"{size[1] // 14}:fontcolor=white:borderw=2:x=(w-tw)/2:y=h-th-{size[1] // 15}",
                                "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", str(q)], check=True)
                q.replace(p)
        rows.append(f"{p},source {i}")
    lst.write_text("\n".join(rows) + "\n")
    return lst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", type=int, default=4)
    ap.add_argument("--shots", type=int, default=6)
    ap.add_argument("--shot-s", type=float, default=2.0)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--only", default="quality,motion,nsfw,text,text-rec")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    args = ap.parse_args()
    import os

    import pyarrow.compute as pc

    from curate.plugins import get_scorer
    from curate.stages.ingest import ingest
    from curate.stages.split import split
    from curate.store import Root

    w, h = (int(x) for x in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="curate-bench-scorers-"))
    try:
        lst = make_sources(work, args.sources, args.shots, (w, h), int(round(args.shot_s * 25)))
        root = Root(work / "ds")
        ingest(root, lst)
        split(root, min_clip_s=0.5)
        clips = root.clips.read_arrow(columns=["clip_id", "status", "duration_s"])
        ids = clips.filter(pc.equal(clips["status"], "ok"))["clip_id"].combine_chunks()
        seconds = float(pc.sum(clips["duration_s"]).as_py())
        media = [root.media_file(m) for m in root.sources.read_arrow(columns=["media_path"])["media_path"].to_pylist()]
        t = time.perf_counter()
        for m in media:
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(m), "-f", "null", "-"], check=True)
        decode_s = time.perf_counter() - t
        out = {"machine": f"{os.uname().machine}, {os.cpu_count()} cores", "size": args.size, "clips": len(ids),
               "video_s": round(seconds, 1), "decode_all_s": round(decode_s, 2), "scorers": {}}
        threads = {"threads": str(args.threads)} if args.threads else {}
        cases = [("quality", "quality", {}), ("motion", "motion", {}), ("nsfw", "nsfw", threads),
                 ("text", "text", threads), ("text-rec", "text", {"recognize": "true", **threads})]
        for label, name, opts in [c for c in cases if c[0] in args.only.split(",")]:
            scorer = get_scorer(name).create(**opts)
            if hasattr(scorer, "load"):
                scorer.load()
            t = time.perf_counter()
            table = scorer.compute(root, ids)
            s = time.perf_counter() - t
            errors = [c for c in table.column_names if c.endswith("_error")]
            bad = sum(int(pc.sum(pc.is_valid(table[c])).as_py() or 0) for c in errors[:1])
            out["scorers"][label] = {"s": round(s, 2), "clips_per_s": round(len(ids) / s, 2),
                                     "x_decode": round(s / decode_s, 2), "errors": bad}
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
