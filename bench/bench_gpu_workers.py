"""A resident `process` worker on one GPU: clips/s, GPU-busy fraction (forward / wall), model-load time and
``nvidia-smi`` utilisation sampled every 200 ms, for CLIP ViT-B/32 and a ViCLIP-sized encoder, both with
random weights (nothing is downloaded). Run it when a GPU is at hand; CI never does.

    PYTHONPATH=src .venv/bin/python bench/bench_gpu_workers.py [--sources 24] [--seconds 20] [--json out.json]
    # ViCLIP-sized: a ViCLIP config.json whose vision tower is ViT-L/14 (weights are made at random from it)
    PYTHONPATH=src .venv/bin/python bench/bench_gpu_workers.py --viclip-config /path/config.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

PATTERNS = ["testsrc2", "mandelbrot", "smptebars", "gradient", "rgbtestsrc", "red", "blue"]


class Smi:
    """``nvidia-smi`` utilisation and memory, sampled every 200 ms in the background."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits", "-lms", "200"], stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                util, mem = (float(x) for x in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((time.time(), util, mem))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def between(self, t0: float, t1: float) -> dict:
        s = [(u, m) for t, u, m in self.samples if t0 <= t <= t1]
        if not s:
            return {"samples": 0}
        return {"samples": len(s), "util_mean": round(statistics.mean(u for u, _ in s), 1),
                "util_median": statistics.median(u for u, _ in s), "mem_max_mib": max(m for _, m in s)}


def make_root(d: Path, sources: int, seconds: int) -> Path:
    from curate.samples import make_video
    from curate.stages.ingest import ingest

    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(sources):
        shots = [(PATTERNS[(i + k) % len(PATTERNS)], 25 * 4) for k in range(max(1, seconds // 4))]
        p = d / f"v{i}.mp4"
        make_video(p, shots, fps=25, size=(640, 360))
        rows.append({"url": str(p), "caption": f"video {i}"})
    lst = d / "sources.csv"
    with open(lst, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["url", "caption"])
        w.writeheader()
        w.writerows(rows)
    root = d / "root"
    ingest(root, str(lst))
    return root


def run(root: Path, encoder: str, options: dict, batch_sources: int, workers: int) -> dict:
    from curate.workers import ProcessWork, chunk, pending_sources, run_worker

    work = ProcessWork(encoder, options=options, device="cuda", batch_size=64, workers=workers,
                       min_clip_s=0.5, max_clip_s=10.0)
    smi = Smi()
    t0 = time.time()
    st = run_worker(root, work, board=f"bench-{encoder}", plan=chunk(pending_sources(root), batch_sources))
    t1 = time.time()
    smi.stop()
    clips = sum(int(e.get("ok") or 0) for e in st["events"])  # sources ok; clips from the table below
    from curate.store import Root

    n_clips = Root(root).embeddings(options.get("name", encoder)).read_arrow(columns=["clip_id"]).num_rows \
        if Root(root).embeddings(encoder).exists() else 0
    loop = st["wall_s"] - st["setup_s"]
    return {"encoder": encoder, "sources_ok": clips, "clips": n_clips, "model_load_s": st["setup_s"],
            "wall_s": st["wall_s"], "clips_per_s": round(n_clips / loop, 2) if loop else None, "busy": st["busy"],
            "busy_after_setup": round(st["forward_s"] / loop, 4) if loop else None,
            "nvidia_smi": smi.between(t0 + st["setup_s"], t1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=24)
    ap.add_argument("--seconds", type=int, default=20, help="length of each source video")
    ap.add_argument("--batch-sources", type=int, default=4)
    ap.add_argument("--decode-workers", type=int, default=max(1, (os.cpu_count() or 4) // 4))
    ap.add_argument("--viclip-config", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import open_clip
    import torch

    base = Path(tempfile.mkdtemp(prefix="curate-bench-gpu-"))
    out = {"gpu": subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True).stdout.strip(), "cpus": os.cpu_count(),
           "sources": a.sources, "seconds": a.seconds}
    torch.manual_seed(0)
    w = base / "vitb32.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), w)
    out["clip_vit_b32"] = run(make_root(base / "clip", a.sources, a.seconds), "clip",
                              {"model": "ViT-B-32", "weights": str(w), "frames": "8"}, a.batch_sources, a.decode_workers)
    print(json.dumps(out["clip_vit_b32"]), flush=True)
    if a.viclip_config:
        from curate.plugins import get_encoder

        enc = get_encoder("viclip").create(device="cpu", config=a.viclip_config, weights="random")
        wv = base / "viclip.pth"
        torch.save(enc.model.state_dict(), wv)
        out["viclip"] = run(make_root(base / "viclip", a.sources, a.seconds), "viclip",
                            {"config": a.viclip_config, "weights": str(wv)}, a.batch_sources, a.decode_workers)
        print(json.dumps(out["viclip"]), flush=True)
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
