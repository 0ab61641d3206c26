"""data-juicer on the same job as bench_job.py, for the side-by-side figure in README Speed.

    python bench/bench_datajuicer.py --dj-python /path/to/dj-venv/bin/python [--frames 8] [--json out.json]

data-juicer (``py-data-juicer``, 1.6.1 measured) is not a dependency of curate: install it in a venv of its
own (``python3.11 -m venv dj && dj/bin/pip install torch==2.14.1 torchvision==0.29.1 py-data-juicer==1.6.1
transformers scenedetect opencv-python-headless av==13.1.0``: data-juicer pins PyAV 13.1 in its
``vision`` extra, and a newer PyAV makes the similarity filter fail every sample) and pass that venv's python.

Same four inputs as bench_job.py (``make_inputs``: a 210 s music video with 124 shots, two real clips, a
120 s 720p source with 24 cuts), same captions, one process (``np: 1``), the same work as curate's job:

1. ``video_split_by_scene_mapper`` (PySceneDetect ContentDetector, threshold 27, min scene 1 s at 25 fps):
   every scene is cut into its own re-encoded mp4 (data-juicer writes the clips while splitting), written as
   plain mp4 (``ffmpeg_extra_args: -movflags +faststart``: with data-juicer's default fragmented mp4, PyAV reads 0 frames and the
   filter below scores every clip 0.0 without running CLIP, a run that looks fast and measures nothing);
2. ``video_frames_text_similarity_filter``: CLIP ViT-B/32 (the Hugging Face layout, random weights written
   here once, since no weights can be downloaded; the tokenizer is OpenAI's BPE that open_clip ships),
   8 frames uniform per clip, keep what scores at least ``--min-score`` (default -1: keep all, which
   costs the same as a median cut: every clip is scored either way).

Reported: data-juicer's wall time for the whole recipe (start-up, model load and every op), the clips it
wrote, and the machine. Run bench_job.py right after for curate's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_job import CACHE, CAPTIONS, make_inputs  # noqa: E402


def hf_clip(folder: Path) -> Path:
    """A random-weight CLIP ViT-B/32 saved in the Hugging Face layout (config, safetensors, processor)."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from curate.encoders.clip4clip import bundled_tokenizer

    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).save_pretrained(folder)  # the defaults are ViT-B/32
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=bundled_tokenizer()).save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dj-python", required=True, help="python of a venv with py-data-juicer installed")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--min-score", type=float, default=-1.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    inputs = make_inputs()
    model = hf_clip(CACHE / "hf-clip-vit-b-32-random")
    with tempfile.TemporaryDirectory(prefix="dj-job-") as d:
        work = Path(d)
        with open(work / "data.jsonl", "w") as f:
            for name, p in inputs.items():
                f.write(json.dumps({"videos": [str(p)], "text": f"<__dj__video> {CAPTIONS[name]} <|__dj__eoc|>"}) + "\n")
        recipe = {
            "project_name": "curate-bench", "dataset_path": str(work / "data.jsonl"),
            "export_path": str(work / "out" / "result.jsonl"), "np": 1, "video_key": "videos", "text_keys": "text",
            "open_tracer": False, "use_cache": False,
            "process": [
                {"video_split_by_scene_mapper": {"detector": "ContentDetector", "threshold": 27.0,
                                                 "min_scene_len": 25, "save_dir": str(work / "clips"),
                                                 # its default (-movflags frag_keyframe+empty_moov) writes
                                                 # fragmented mp4 whose frame count PyAV reads as 0: the
                                                 # similarity filter then samples no frame and scores 0.0
                                                 # without running CLIP at all
                                                 "ffmpeg_extra_args": "-movflags +faststart"}},
                {"video_frames_text_similarity_filter": {"hf_clip": str(model), "min_score": a.min_score,
                                                         "max_score": 1.0, "frame_sampling_method": "uniform",
                                                         "frame_num": a.frames, "any_or_all": "any"}},
            ],
        }
        (work / "recipe.yaml").write_text(json.dumps(recipe))  # JSON is YAML
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        t = time.perf_counter()
        p = subprocess.run([str(Path(a.dj_python).parent / "dj-process"), "--config", str(work / "recipe.yaml")],
                           cwd=work, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"data-juicer failed ({p.returncode}):\n{p.stderr[-4000:]}")
        clips = len(list((work / "clips").glob("*.mp4"))) if (work / "clips").exists() else None
        kept = sum(1 for _ in open(work / "out" / "result.jsonl")) if (work / "out" / "result.jsonl").exists() else None
    if a.min_score <= -1 and not kept:
        sys.exit(f"data-juicer kept no sample at min_score {a.min_score}: its similarity filter failed on every sample "
                 "(a PyAV other than 13.1?); the time does not count")
    out = {"data_juicer_s": round(wall, 2), "clips_written": clips, "samples_kept": kept,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()}}
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
