"""Clips/s of every encoder at full size (random weights), on this machine's CPU or a GPU.

    .venv/bin/python bench/bench_encoders.py [--device auto] [--clips 4] [--encoders clip clip4clip viclip askvideos]

For each encoder: the model is built at its real size with randomly initialised weights (no download),
``--clips`` synthetic clips of the encoder's frame count and input size go through
``embed_video_batch`` (after one warm-up batch); prints clips/s, frames/s and the embedding shape.
This is the encoder's pure forward rate: `bench/bench_pipeline.py` shows how close the whole embed
stage gets to it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

OPTIONS = {
    "clip": {"model": "ViT-B-32", "weights": "random"},
    "clip-L14": {"model": "ViT-L-14", "weights": "random"},
    "clip4clip": {"weights": "random", "max_frames": "12"},
    "viclip": {"weights": "random", "size": "l"},
    "askvideos": {"weights": "random"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--encoders", nargs="+", default=list(OPTIONS))
    args = ap.parse_args()
    import torch

    from curate.encoders import load_encoder

    out = {}
    for name in args.encoders:
        enc = load_encoder(name.split("-")[0], OPTIONS[name], args.device)
        info = enc.info
        t_frames = info.num_frames or 12
        size = info.frame_size or 224
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 255, (t_frames, 360, 640, 3), dtype=np.uint8)
        if enc.decode_size(640, 360):
            w, h = enc.decode_size(640, 360)
            frames = rng.integers(0, 255, (t_frames, h, w, 3), dtype=np.uint8)
        x = enc.preprocess(frames)
        enc.embed_video_batch([x])  # warm-up
        if str(enc.device).startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        v = enc.embed_video_batch([x] * args.clips)
        if str(enc.device).startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        out[name] = {"clips_per_s": round(args.clips / dt, 3), "frames_per_clip": t_frames, "frame_size": size,
                     "embedding": list(np.asarray(v).shape[1:]), "params_M": round(sum(
                         p.numel() for p in enc.model.parameters()) / 1e6, 1) if hasattr(enc, "model") else None}
        print(name, out[name], flush=True)
        del enc
    dev = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(json.dumps({"machine": f"{platform.machine()} {__import__('os').cpu_count()} cores, {dev}"
                      + (f" ({torch.cuda.get_device_name()})" if dev == "cuda" else ""), "results": out}))


if __name__ == "__main__":
    main()
