"""The embed phase of curate_pipeline on a real CeleryExecutor cluster with 1 and 2 gpu-queue workers
(resident worker slots; their start-up, with and without Celery preloading), and the scheduling overhead per
mapped task; with ``--cli``, the same GPU phase
without Airflow: one fresh process per batch (what a per-batch task pays: imports + model load) against
resident ``curate process --worker`` processes, 1 and 2 at a time.

    PYTHONPATH=src .venv/bin/python bench/bench_cluster.py [--sources 8] [--shots 6] [--forward-s 2] [--preload] [--json out.json]
    PYTHONPATH=src .venv/bin/python bench/bench_cluster.py --cli --sources 12 --shots 3
    PYTHONPATH=src .venv/bin/python bench/bench_cluster.py --cli --sources 12 --shots 6 --forward-s 6 --modes resident

``--forward-s S`` runs the bench's own encoder plugin ``slowclip`` (registered like a third-party package: an
entry point in a dist-info directory put on PYTHONPATH): the tiny CLIP whose ``embed_video_batch`` also waits
S seconds per clip, off the CPU, as a GPU forward does. A tiny model's forward is milliseconds, so without it
the GPU phase is start-up and decode alone and neither the start-up share nor the 2-worker speed-up of
real model work can be seen.

Starts the local cluster of ``scripts/cluster.sh`` (PostgreSQL, Redis, scheduler, dag-processor, API
server, one default worker with 2 slots, gpu workers with 1 slot and one torch thread each; ``--preload``:
the gpu workers preload torch, torchvision and open_clip before forking their pool), runs the pipeline on
``--sources`` ffmpeg-made videos of ``--shots`` 2 s shots each (``batch_size`` 1: one batch per source; a tiny
random CLIP on CPU), first with one gpu worker and ``gpu_slots`` 1, then with a second one started and
``gpu_slots`` 2, each run on a fresh root. From the metadata DB and the board's worker stats:

- the embed phase: first ``embed`` slot start to last ``embed`` slot end, and clips / s over it;
- per embed slot: start-up = its task process's start (fork) -> the worker began (``launch_s``: the task
  runner, the DAG file, imports) -> the model loaded (``setup_s``), its share of the slot's life, the heavy
  modules it found already imported (preloaded);
- per mapped ``batch.split`` task: the time Airflow adds around the stage (task duration minus the stage's
  own ``seconds``) and the queue delay (task start minus the end of its ``batch.ingest``).
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

PATTERNS = ["testsrc2", "mandelbrot", "smptebars", "gradient", "rgbtestsrc", "red", "blue"]
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}


def make_inputs(d: Path, sources: int, shots: int) -> dict:
    import open_clip
    import torch

    from curate.samples import make_video

    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(sources):
        seq = [(PATTERNS[(i + k) % len(PATTERNS)], 20 + (i + k) % 5) for k in range(shots)]
        p = d / f"v{i}.mp4"
        make_video(p, seq, fps=10, size=(160, 96))
        rows.append({"url": str(p), "caption": f"video {i}"})
    with open(d / "sources.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["url", "caption"])
        w.writeheader()
        w.writerows(rows)
    cfg = d / "bench-tiny-clip.json"
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    torch.save(open_clip.create_model(cfg.stem, pretrained=None).state_dict(), d / "tiny.pt")
    return {"list": str(d / "sources.csv"), "options": {"model_config": str(cfg), "weights": str(d / "tiny.pt"),
                                                        "frames": "4"}}


SLOW_PLUGIN = '''"""The bench's encoder: the tiny CLIP, plus FORWARD_S seconds per clip in embed_video_batch (a GPU forward's
time, spent off the CPU as on a GPU)."""
import time

from curate import hookimpl
from curate.encoders.clip import ClipEncoder


class SlowClip(ClipEncoder):
    def __init__(self, forward_s="0", **options):
        super().__init__(**options)
        self.forward_s = float(forward_s)

    def embed_video_batch(self, inputs):
        time.sleep(self.forward_s * len(inputs))
        return super().embed_video_batch(inputs)


@hookimpl
def register_encoders(register):
    register("slowclip", lambda **options: SlowClip(**options), description="bench: tiny CLIP + a slow forward",
             options={"forward_s": "seconds per clip spent in the forward, off the CPU"})
'''


def slow_plugin(d: Path) -> Path:
    """Install the ``slowclip`` encoder plugin into ``d`` (a module + a dist-info with its entry point): put ``d``
    on PYTHONPATH and curate finds it as it finds any installed plugin."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "bench_slowclip.py").write_text(SLOW_PLUGIN)
    info = d / "bench_slowclip-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-slowclip\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[curate]\nslowclip = bench_slowclip\n")
    return d


def xcoms(c, run_id: str, task_id: str) -> dict[int, dict]:
    """The JSON return values of a mapped task, by map index (the stage's own seconds are in them)."""
    rows = c.query("select map_index, value from xcom where dag_id = 'curate_pipeline' and run_id = %s "
                   "and task_id = %s and key = 'return_value'", (run_id, task_id))
    out = {}
    for m, v in rows:
        v = v if isinstance(v, dict) else json.loads(v if isinstance(v, str) else bytes(v).decode())
        out[m] = v
    return out


def measure(c, run_id: str, root: str) -> dict:
    from curate.workers import boards

    tis = [t for t in c.task_instances("curate_pipeline", run_id) if t["state"] == "success"]
    by = {(t["task_id"], t["map_index"]): t for t in tis}
    emb = [t for t in tis if t["task_id"] == "embed"]  # the resident slots
    [board] = boards(root)
    summary = board.summary("embed")
    stats = board.stats("embed")
    clips = _clips(Path(root))  # (a batch's "ok" counts its sources, not its clips)
    span = (max(t["end_date"] for t in emb) - min(t["start_date"] for t in emb)).total_seconds()
    overhead, delay = [], []
    for task, upstream in (("batch.split", "batch.ingest"),):
        out = xcoms(c, run_id, task)
        for t in (t for t in tis if t["task_id"] == task):
            dur = (t["end_date"] - t["start_date"]).total_seconds()
            if t["map_index"] in out:
                overhead.append(dur - float(out[t["map_index"]].get("seconds", 0)))
            up = by.get((upstream, t["map_index"]))
            if up is not None:
                delay.append((t["start_date"] - up["end_date"]).total_seconds())
    # a slot's start-up: its task process's start (fork) -> the worker began (launch_s: Airflow's task runner,
    # the DAG file, imports before the worker) -> the model loaded (setup_s); and task start -> first batch
    firsts = {w["worker"]: min((e["start"] for e in w.get("events", [])), default=None) for w in stats}
    startup = [round((w.get("launch_s") or 0) + w["setup_s"], 2) for w in stats]
    return {"clips": clips, "embed_slots": len(emb), "embed_span_s": round(span, 1),
            "slot_startup_s": startup, "slot_launch_s": [w.get("launch_s") for w in stats],
            "slot_setup_s": [w["setup_s"] for w in stats], "slot_wall_s": [w["wall_s"] for w in stats],
            "slot_startup_share": round(sum(startup) / sum(w["wall_s"] + (w.get("launch_s") or 0) for w in stats), 4),
            "slot_preloaded": [w.get("preloaded") for w in stats],
            "first_batch_after_start_s": sorted(round(f - w["started_at"] + (w.get("launch_s") or 0), 2)
                                                for w in stats if (f := firsts[w["worker"]]) is not None),
            "clips_per_s": round(clips / span, 2) if span else None, "batches": summary["batches"],
            "model_loads": summary["model_loads"], "setup_share": round(summary["setup_s"] / summary["wall_s"], 4)
            if summary["wall_s"] else None, "busy": summary["busy"],
            "hosts": sorted({t["hostname"] for t in emb}),
            "overhead_per_task_s_median": round(statistics.median(overhead), 2) if overhead else None,
            "queue_delay_s_median": round(statistics.median(delay), 2) if delay else None}


def _clips(root: Path) -> int:
    """Clips embedded on the root (rows of its one embedding set)."""
    import lance

    [name] = [p.name for p in (root / "embeddings").iterdir() if p.is_dir()]
    return lance.dataset(str(root / "embeddings" / name)).count_rows()


def _curate(*args, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "curate.cli", *map(str, args), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def cli_compare(base: Path, inputs: dict, sources: int, forward_s: float = 0.0,
                modes: tuple | list = ("per_batch", "resident")) -> dict:
    """The GPU phase (`curate process`) over one batch per source, from shells: a fresh process per batch (as
    a per-batch task: imports + model load each time) vs resident ``--worker`` processes; 1 and 2 at a time.
    Start-up: from a process's launch to its first batch in the model (imports, model load); busy: time in
    the forward / the workers' summed wall (per-batch processes: the emulated forward, known by construction)."""
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    options, encoder = dict(inputs["options"]), "clip"
    if forward_s > 0:
        paths.insert(0, str(slow_plugin(base / "plugin")))
        options["forward_s"], encoder = str(forward_s), "slowclip"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "NO_COLOR": "1",
           "PYTHONPATH": os.pathsep.join(paths)}
    opts = [a for k, v in options.items() for a in ("-o", f"{k}={v}")]
    common = ["-e", encoder, "--device", "cpu", "--batch-size", "16", "--min-clip-s", "0.5", "--max-clip-s", "3",
              *opts]
    out: dict = {}
    for n in (1, 2):
        for mode in modes:
            root = base / f"{mode}-{n}"
            subprocess.run([sys.executable, "-m", "curate.cli", "ingest", inputs["list"], "--root", str(root)],
                           check=True, capture_output=True, env=env)
            from curate.workers import pending_sources

            ids = pending_sources(root)
            t0, epoch0 = time.perf_counter(), time.time()
            if mode == "resident":
                procs = [_curate("process", "--root", root, *common, "--worker", "--batch-sources", 1, env=env)
                         for _ in range(n)]
                res = []
                for p in procs:
                    o, e = p.communicate()
                    res.append(json.loads(o) if p.returncode == 0 else sys.exit(f"curate process --worker: {e}"))
                wall = time.perf_counter() - t0
                # a worker's wall: launch -> its loop ended; start-up: launch -> its first batch (or its end, if it got none)
                walls = [r["stats"]["started_at"] + r["stats"]["wall_s"] - epoch0 for r in res]
                starts = [min((e["start"] for e in r["stats"]["events"]), default=w + epoch0) - epoch0
                          for r, w in zip(res, walls)]
                out[f"{mode}_{n}"] = {"wall_s": round(wall, 1), "clips": _clips(root),
                                      "batches": sum(r["batches"] for r in res),
                                      "batches_per_worker": [r["batches"] for r in res],
                                      "model_loads": sum(r["model_loads"] for r in res),
                                      "launch_s": [r["stats"].get("launch_s") for r in res],
                                      "setup_s": [round(r["setup_s"], 2) for r in res],
                                      "startup_s": [round(x, 2) for x in starts],
                                      "startup_share": round(sum(starts) / sum(walls), 4),
                                      "busy": round(sum(r["forward_s"] for r in res) / sum(walls), 4)}
            else:
                todo, running, walls, stage_s = list(ids), [], [], []
                while todo or running:
                    while todo and len(running) < n:
                        f = base / f"ids-{mode}-{n}-{len(todo)}.txt"
                        f.write_text(todo.pop(0) + "\n")
                        running.append((time.perf_counter(), _curate("process", "--root", root, *common,
                                                                     "--source-ids", f, env=env)))
                    t, p = running.pop(0)
                    r = json.loads(p.communicate()[0])
                    walls.append(time.perf_counter() - t)
                    stage_s.append(float(r.get("seconds", 0)))
                wall = time.perf_counter() - t0
                out[f"{mode}_{n}"] = {"wall_s": round(wall, 1), "batches": len(walls), "model_loads": len(walls),
                                      "clips": (clips := _clips(root)), "process_s_median": round(statistics.median(walls), 2),
                                      "stage_s_median": round(statistics.median(stage_s), 2),
                                      "startup_share": round(1 - sum(stage_s) / sum(walls), 4),
                                      "busy_emulated": round(clips * forward_s / sum(walls), 4)}
            print(json.dumps({f"{mode}_{n}": out[f"{mode}_{n}"]}), flush=True)
    for mode in modes:
        out[f"{mode}_speedup_2_vs_1"] = round(out[f"{mode}_1"]["wall_s"] / out[f"{mode}_2"]["wall_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--shots", type=int, default=6)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cli", action="store_true", help="per-batch processes vs resident --worker processes, no Airflow")
    ap.add_argument("--forward-s", type=float, default=0.0,
                    help="seconds per clip of emulated GPU forward (the bench's slowclip encoder plugin)")
    ap.add_argument("--preload", nargs="?", const="1", default=None, metavar="MODULES",
                    help="cluster: gpu workers preload these modules (none given: torch, torchvision, open_clip)")
    ap.add_argument("--modes", default="per_batch,resident", help="--cli: which of per_batch,resident to run")
    a = ap.parse_args()
    if a.cli:
        base = Path(tempfile.mkdtemp(prefix="curate-bench-workers-"))
        inputs = make_inputs(base / "inputs", a.sources, a.shots)
        out = {"machine": f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.1f}",
               "sources": a.sources, "shots": a.shots, "forward_s_per_clip": a.forward_s,
               **cli_compare(base, inputs, a.sources, a.forward_s, a.modes.split(","))}
        out["load_average_end"] = round(os.getloadavg()[0], 1)
        print(json.dumps(out, indent=2))
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=2))
        return

    out = celery_bench(a)
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


def celery_bench(a) -> dict:
    """curate_pipeline on a local CeleryExecutor cluster, with 1 then 2 gpu workers (fresh root each)."""
    from curate.airflow.localcluster import LocalCluster

    base = Path(tempfile.mkdtemp(prefix="curate-bench-cluster-"))
    inputs = make_inputs(base / "inputs", a.sources, a.shots)
    roots = base / "roots"
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    options, encoder = dict(inputs["options"]), "clip"
    if a.forward_s > 0:
        paths.insert(0, str(slow_plugin(base / "plugin")))
        options["forward_s"], encoder = str(a.forward_s), "slowclip"
    env = {"CURATE_ROOTS": os.pathsep.join(str(roots / n) for n in ("one", "two")),
           "CURATE_ALLOWED_DIRS": str(base / "inputs"), "CURATE_INBOX_SCHEDULE": "none",
           "PYTHONPATH": os.pathsep.join(paths)}
    out = {"machine": f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.1f}",
           "sources": a.sources, "shots": a.shots, "forward_s_per_clip": a.forward_s, "preload": a.preload}
    t0 = time.time()
    with LocalCluster(base / "cluster", dags_folder=REPO / "dags", gpu_workers=1, env=env, preload=a.preload) as c:
        out["cluster_start_s"] = round(time.time() - t0, 1)
        for n, name in ((1, "one"), (2, "two")):
            if n == 2:
                c.start_worker("gpu2", "gpu", concurrency=1)
                c.airflow("pools", "set", "gpu", "2", "GPU slots")
            conf = {"sources": inputs["list"], "root": str(roots / name), "subset": "s", "encoder": encoder,
                    "encoder_options": options, "device": "cpu", "embed_batch_size": 16,
                    "min_sim": -1.0, "min_clip_s": 0.5, "max_clip_s": 3.0, "batch_size": 1, "shard_size": 50,
                    "gpu_slots": n}
            t1 = time.time()
            run_id = c.trigger("curate_pipeline", conf, f"bench-{n}")
            state = c.wait_run("curate_pipeline", run_id, timeout_s=1800)
            out[f"gpu_workers_{n}"] = {"state": state, "run_wall_s": round(time.time() - t1, 1),
                                       **measure(c, run_id, str(roots / name))}
            print(json.dumps({f"gpu_workers_{n}": out[f"gpu_workers_{n}"]}), flush=True)
    out["embed_speedup_2_vs_1"] = round(out["gpu_workers_1"]["embed_span_s"] / out["gpu_workers_2"]["embed_span_s"], 2)
    out["load_average_end"] = round(os.getloadavg()[0], 1)
    return out

if __name__ == "__main__":
    main()
