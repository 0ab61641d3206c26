"""Split + embed speed against the physical floor, and against a naive per-clip pipeline.

    .venv/bin/python bench/bench_pipeline.py [--seconds 180] [--height 720] [--model ViT-B-32] [--device auto]

Makes a source of ``--seconds`` at ``--height``p with a hard cut every 2-5 s (ffmpeg lavfi, cached in
/tmp/curate-bench), then reports:

- decode: one ``ffmpeg -v error -i SRC -f null -`` pass (the floor on CPU);
- split: `curate split` (ContentDetector) as a multiple of that decode;
- one pass: `curate process` (split + frame sampling + preprocessing in one decode) as a multiple of
  the decode, twice: with the clip encoder's sampling and preprocessing but no forward pass (what the
  decode pass itself costs: on a GPU the forward runs elsewhere), and with a tiny CLIP on the same CPU.
  Each is the median of ``--repeat`` runs, interleaved with decode runs (the ratio of medians);
- embed: `curate embed` with the ``clip`` encoder (random weights, full-size model, 8 frames/clip),
  end-to-end clips/s next to the encoder's pure forward clips/s on the same number of frames, and on
  CUDA the GPU's mean utilisation during the stage (nvidia-smi samples, ``embed_gpu_busy_pct``);
- naive: what per-clip tools do: ffmpeg cuts every clip (re-encode), then each clip file is
  decoded to sample its 8 frames and embedded; reported as a ratio to curate's split + embed.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

SHOTS = ["testsrc2", "mandelbrot", "smptebars", "rgbtestsrc", "gradient", "red", "blue"]


def make_source(seconds: int, height: int, fps: int = 25) -> tuple[Path, int]:
    from curate.samples import make_video

    width = height * 16 // 9
    path = Path(tempfile.gettempdir()) / "curate-bench" / f"src_{seconds}s_{height}p.mp4"
    rng = np.random.default_rng(0)
    shots, total, i = [], 0, 0
    while total < seconds * fps:
        n = int(rng.integers(2 * fps, 5 * fps))
        shots.append((SHOTS[i % len(SHOTS)], n))
        total += n
        i += 1
    if not path.exists():
        make_video(path, shots, fps=fps, size=(width, height))
    return path, len(shots)


class NoForward:
    """An encoder's sampling and preprocessing with its forward pass replaced by zeros: what the decode
    pass of `curate process` costs by itself (on a GPU the forward runs on the GPU, beside it)."""

    def __init__(self, enc) -> None:
        self.enc = enc

    def __getattr__(self, name):
        return getattr(self.enc, name)

    def embed_video_batch(self, inputs):
        return np.zeros((len(inputs), self.enc.info.embed_dim), np.float32)

    def embed_texts(self, texts, batch_size: int = 256):
        return np.zeros((len(texts), self.enc.info.embed_dim), np.float32)


class GpuBusy:
    """Samples the GPU's utilisation (nvidia-smi, every 200 ms) while a stage runs; nothing on CPU."""

    def __init__(self, device: str) -> None:
        self.device, self.samples, self.proc = device, [], None

    def __enter__(self):
        if self.device.startswith("cuda") and shutil.which("nvidia-smi"):
            index = self.device.split(":")[1] if ":" in self.device else "0"
            self.proc = subprocess.Popen(["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu",
                                          "--format=csv,noheader,nounits", "-lms", "200"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            self.samples = [float(v) for v in out.split() if v.strip().replace(".", "", 1).isdigit()]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=180)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the one-pass measure (median)")
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()

    import torch

    from curate.encoders import load_encoder
    from curate.media.video import get_frames, open_video
    from curate.stages.embed import embed
    from curate.stages.ingest import ingest
    from curate.stages.split import split

    src, n_shots = make_source(args.seconds, args.height)
    work = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    root = work / "ds"
    t_decode, _ = timed(lambda: subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-f", "null", "-"], check=True))
    ingest(root, [str(src)])
    t_split, r = timed(lambda: split(root, min_clip_s=0.5, max_clip_s=60))
    n_clips = r.extra["clips"]
    opts = {"model": args.model, "weights": "random"}
    enc = load_encoder("clip", opts, args.device)
    device = enc.device
    with GpuBusy(device) as busy:
        t_embed, r = timed(lambda: embed(root, "clip", options=opts, device=args.device, batch_size=args.batch_size,
                                         encoder_obj=enc))
    assert r.ok == n_clips, r.as_dict()
    x = torch.randn(args.batch_size * 8, 3, enc.image_size, enc.image_size)
    enc.encode_frames(x[:8])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    n_batches = max(1, n_clips // args.batch_size)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        enc.encode_frames(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    forward_cps = n_batches * args.batch_size / (time.perf_counter() - t0)

    result = {
        "machine": f"{platform.machine()} {__import__('os').cpu_count()} cores, device {device}"
                   + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""),
        "source": f"{args.seconds} s {args.height}p 25 fps, {n_shots} shots", "clips": n_clips,
        "decode_s": round(t_decode, 2), "split_s": round(t_split, 2), "split_x_decode": round(t_split / t_decode, 2),
        "embed_s": round(t_embed, 2), "embed_clips_per_s": round(n_clips / t_embed, 2),
        "forward_clips_per_s": round(forward_cps, 2), "embed_vs_forward": round(n_clips / t_embed / forward_cps, 2),
        "split_plus_embed_s": round(t_split + t_embed, 2),
    }
    if busy.samples:
        result["embed_gpu_busy_pct"] = round(sum(busy.samples) / len(busy.samples), 1)
    # one decode pass for split + frame sampling (`curate process`): the encoder's sampling and
    # preprocessing without its forward (NoForward), then with a tiny CLIP running on the same CPU
    import json as _json
    import statistics

    import open_clip

    from curate.stages.process import process

    tiny = work / "bench-tiny.json"
    tiny.write_text(_json.dumps({"embed_dim": 32, "vision_cfg": {"image_size": 224, "layers": 1, "width": 64,
                                                                 "patch_size": 32},
                                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4,
                                              "layers": 1}}))
    open_clip.add_model_config(tiny)
    ckpt = work / "bench-tiny.pt"
    torch.save(open_clip.create_model("bench-tiny").state_dict(), ckpt)
    tiny_opts = {"model_config": str(tiny), "weights": str(ckpt)}
    tiny_enc = load_encoder("clip", tiny_opts, "cpu")
    decodes, runs = [], {"no_forward": [], "tiny_model": []}
    for i in range(args.repeat):
        for kind, obj in (("no_forward", NoForward(tiny_enc)), ("tiny_model", tiny_enc)):
            decodes.append(timed(lambda: subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-f", "null", "-"],
                                                        check=True))[0])
            r2 = work / f"one-{kind}-{i}"
            ingest(r2, [str(src)])
            t, r = timed(lambda r2=r2, obj=obj: process(r2, "clip", options=tiny_opts, min_clip_s=0.5, max_clip_s=60,
                                                        device="cpu", encoder_obj=obj))
            assert r.extra["clips"] == n_clips, (r.extra, n_clips)  # the same scenes as `curate split`
            runs[kind].append(t)
            shutil.rmtree(r2)
    d = statistics.median(decodes)
    result.update(one_pass_decode_s=round(d, 2),
                  one_pass_s=round(statistics.median(runs["no_forward"]), 2),
                  one_pass_x_decode=round(statistics.median(runs["no_forward"]) / d, 2),
                  one_pass_tiny_model_s=round(statistics.median(runs["tiny_model"]), 2),
                  one_pass_tiny_model_x_decode=round(statistics.median(runs["tiny_model"]) / d, 2))
    if not args.skip_naive:
        from curate.store import Root

        clips = Root(root).clips.read().sort_values("start_frame")
        cut_dir = work / "naive"
        cut_dir.mkdir()

        def naive():
            for c in clips.itertuples():  # cut every clip first, one ffmpeg process each (peers' split stage)
                subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", f"{c.start_s:.3f}", "-i", str(src), "-t",
                                f"{c.duration_s:.3f}", "-c:v", "libx264", "-preset", "veryfast", "-an",
                                str(cut_dir / f"{c.clip_id}.mp4")], check=True)
            inputs = []
            for c in clips.itertuples():  # then decode each clip file to sample its frames
                vr = open_video(cut_dir / f"{c.clip_id}.mp4")
                inputs.append(enc.preprocess(get_frames(vr, enc.frame_indices(len(vr), 25.0))))
            for i in range(0, len(inputs), args.batch_size):
                enc.embed_video_batch(inputs[i:i + args.batch_size])

        t_naive, _ = timed(naive)
        result.update(naive_s=round(t_naive, 2), naive_over_curate=round(t_naive / (t_split + t_embed), 2))
    shutil.rmtree(work, ignore_errors=True)
    for k, v in result.items():
        print(f"{k:22s} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
