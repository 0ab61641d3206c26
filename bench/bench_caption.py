"""Captions/s and tokens/s of the built-in captioners, through the whole `curate caption` stage.

    PYTHONPATH=src .venv/bin/python bench/bench_caption.py [--device cpu] [--sources 8] [--batch-size 8]
        [--frames 4] [--max-new-tokens 32] [--min-new-tokens 32] [--weights DIR] [--input images|video]
        [--json out.json]
    PYTHONPATH=src .venv/bin/python bench/bench_caption.py --captioner openai [--latency 0.2]
        [--concurrency 1,4,16,64] [--sources 32] [--base-url URL --model NAME]

``--captioner openai`` captions the same root through the `openai` captioner against the test server
(tests/vlm_server.py, a real HTTP server on 127.0.0.1 that answers each request after ``--latency``
seconds, as a serving engine whose batch never fills would), once per in-flight bound of
``--concurrency``: the clips/s curve shows the bound doing its job (at most ``bound / latency``).
``--base-url``/``--model`` point it at a real endpoint (e.g. `vllm serve`) instead.

Builds a root of ``--sources`` synthetic videos (ffmpeg lavfi, 320x240, two shots each -> two clips),
ingests and splits it, then captions every clip with the `hf` captioner: by default the tiny random
Qwen2.5-VL the tests build (tests/tiny_vlm.py: real architecture and processor, ~100 k parameters, so
the figures measure curate's overhead: decoding, the processor, generate's loop); ``--weights`` points
at a real model directory (e.g. Qwen2.5-VL-3B-Instruct) instead. One warm-up run on one clip loads the
model first. ``--min-new-tokens`` (default = ``--max-new-tokens``) makes every caption the same length,
so tokens/s compares across runs (a random model stops at random). Prints the stage's own figures
(``captions_per_s`` and ``tokens_per_s`` of generation, ``tokens`` generated) and the end-to-end
clips/s of the stage (decoding included).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--min-new-tokens", type=int, default=32,
                    help="force this many tokens (a random model stops at random; 0: let it stop)")
    ap.add_argument("--input", default="images", choices=["images", "video"])
    ap.add_argument("--weights", default=None, help="a model directory (default: the tiny test model)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--captioner", default="hf", choices=["hf", "openai"])
    ap.add_argument("--latency", type=float, default=0.2, help="openai: the test server's seconds per answer")
    ap.add_argument("--concurrency", default="1,4,16,64", help="openai: in-flight bounds to run, comma-separated")
    ap.add_argument("--base-url", default=None, help="openai: a real endpoint instead of the test server")
    ap.add_argument("--model", default="tiny-vlm", help="openai: the served model name")
    args = ap.parse_args()

    import torch

    from curate.samples import make_video
    from curate.stages.caption import caption
    from curate.stages.ingest import ingest
    from curate.stages.split import split

    tmp = Path(tempfile.mkdtemp(prefix="bench-caption-"))
    weights = args.weights
    if weights is None and args.captioner == "hf":
        from tiny_vlm import build_tiny_qwen2_5_vl

        weights = str(build_tiny_qwen2_5_vl(tmp / "tiny-qwen2.5-vl"))
    shots = [("testsrc2", 40), ("mandelbrot", 40), ("smptebars", 40), ("gradient", 40), ("rgbtestsrc", 40)]
    paths = []
    for i in range(args.sources):
        p = tmp / f"v{i}.mp4"
        make_video(p, [shots[i % len(shots)], shots[(i + 2) % len(shots)]], fps=25)
        paths.append(str(p))
    root = tmp / "root"
    ingest(root, paths)
    split(root, min_clip_s=0.5)
    if args.captioner == "openai":
        return bench_openai(args, root)
    opts = {"weights": weights, "frames": str(args.frames), "max_new_tokens": str(args.max_new_tokens),
            "min_new_tokens": str(args.min_new_tokens), "input": args.input}
    from curate.stages.caption import load_captioner

    cap = load_captioner("hf", opts, args.device)
    from curate.store import Root

    first = Root(root).clips.read(columns=["clip_id"]).clip_id.tolist()[:1]
    caption(root, "hf", options=opts, name="warmup", device=args.device, clip_ids=first, captioner_obj=cap)
    t0 = time.perf_counter()
    r = caption(root, "hf", options=opts, name="bench", device=args.device, batch_size=args.batch_size,
                captioner_obj=cap)
    wall = time.perf_counter() - t0
    out = {"clips": r.total, "ok": r.ok, "error": r.error, "tokens": r.extra["tokens"],
           "captions_per_s": r.extra["captions_per_s"], "tokens_per_s": r.extra["tokens_per_s"],
           "stage_clips_per_s": round(r.total / wall, 3), "stage_seconds": round(wall, 2),
           "batch_size": args.batch_size, "frames": args.frames, "max_new_tokens": args.max_new_tokens,
           "min_new_tokens": args.min_new_tokens,
           "input": args.input, "model": cap.info.model, "weights": "tiny test model" if args.weights is None else weights,
           "device": str(cap.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


def bench_openai(args, root: Path) -> None:
    """The `openai` captioner at each in-flight bound, against the test server (or ``--base-url``)."""
    from contextlib import nullcontext

    from vlm_server import VLMServer

    from curate.stages.caption import caption

    runs = []
    server = nullcontext() if args.base_url else VLMServer(frames=args.frames, latency=args.latency,
                                                           completion_tokens=args.max_new_tokens)
    with server as s:
        base_url = args.base_url or s.base_url
        for i, bound in enumerate(int(x) for x in args.concurrency.split(",")):
            opts = {"base_url": base_url, "model": args.model, "frames": str(args.frames),
                    "max_new_tokens": str(args.max_new_tokens), "input": args.input, "concurrency": str(bound)}
            t0 = time.perf_counter()
            r = caption(root, "openai", options=opts, name=f"bench-{i}-{bound}")
            wall = time.perf_counter() - t0  # preflight included: 3 small requests
            runs.append({"concurrency": bound, "clips": r.total, "ok": r.ok, "error": r.error,
                         "stage_clips_per_s": round(r.total / wall, 2), "captions_per_s": r.extra["captions_per_s"],
                         "tokens_per_s": r.extra["tokens_per_s"], "stage_seconds": round(wall, 2),
                         "max_in_flight": None if args.base_url else s.max_in_flight})
            if not args.base_url:
                s.reset_counts()
    out = {"captioner": "openai", "server": base_url if args.base_url else f"test server, {args.latency} s/answer",
           "frames": args.frames, "input": args.input, "completion_tokens": args.max_new_tokens, "runs": runs,
           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
