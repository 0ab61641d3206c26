"""Peak memory of every stage as the dataset grows: it should stay flat (nothing grows with the dataset).

    .venv/bin/python bench/bench_memory.py --sources 10 1000

For each size, N short sources (2 shots each, 160x120, ffmpeg lavfi; made once and hard-linked) go
through ingest, split, embed (tiny random open_clip model, CPU), score, filter and publish, each
stage in its own process, as `curate` runs it; reports the peak RSS (MiB) of each stage and the
ratio between the largest and the smallest size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}


def peak_rss_of(cmd: list[str]) -> float:
    """Peak RSS (MiB) of one child process (run through a fresh python so ru_maxrss is its own)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", type=int, nargs="+", default=[10, 1000])
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "curate-bench-mem"))
    args = ap.parse_args()
    import open_clip
    import torch

    from curate.samples import make_video

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base.mp4"
    if not base.exists():
        make_video(base, [("testsrc2", 30), ("smptebars", 30)], size=(160, 120))
    cfg = work / "bench-tiny-clip.json"
    cfg.write_text(json.dumps(TINY))
    ckpt = work / "tiny.pt"
    if not ckpt.exists():
        open_clip.add_model_config(cfg)
        torch.save(open_clip.create_model("bench-tiny-clip").state_dict(), ckpt)
    cli = [sys.executable, "-m", "curate.cli"]
    table = {}
    for n in args.sources:
        vids = work / f"videos_{n}"
        vids.mkdir(exist_ok=True)
        lines = ["url,caption"]
        for i in range(n):
            p = vids / f"v{i:05d}.mp4"
            if not p.exists():
                os.link(base, p)
            lines.append(f"{p},test pattern number {i}")
        lst = work / f"list_{n}.csv"
        lst.write_text("\n".join(lines) + "\n")
        root = work / f"root_{n}"
        subprocess.run(["rm", "-rf", str(root)], check=True)
        stages = {
            "ingest": [*cli, "ingest", str(lst), "--root", str(root)],
            "split": [*cli, "split", "--root", str(root), "--min-clip-s", "0.5"],
            "embed": [*cli, "embed", "--root", str(root), "-o", f"model_config={cfg}", "-o", f"weights={ckpt}",
                      "--device", "cpu"],
            "score": [*cli, "score", "--root", str(root)],
            "filter": [*cli, "filter", "--root", str(root), "--subset", "all", "--min-duration", "0.5"],
            "publish": [*cli, "publish", "--root", str(root), "--subset", "all"],
        }
        table[n] = {s: round(peak_rss_of(cmd)) for s, cmd in stages.items()}
        print(n, table[n], flush=True)
    lo, hi = min(args.sources), max(args.sources)
    print(f"{'stage':8s} " + " ".join(f"{n:>8d}" for n in args.sources) + "   ratio")
    for s in table[lo]:
        print(f"{s:8s} " + " ".join(f"{table[n][s]:8d}" for n in args.sources) + f"   {table[hi][s] / table[lo][s]:.2f}")
    print(json.dumps(table))
    _ = resource


if __name__ == "__main__":
    main()
