"""Scale-out on the real thing: curate_pipeline on a CeleryExecutor cluster (PostgreSQL, Redis, scheduler,
dag-processor, API server, one default-queue worker and two gpu-queue workers, all on 127.0.0.1) writing a
root in an S3 bucket (moto's server on loopback), and the same split of work from the CLI (``--shard i/n``)
in several processes.

Both must give exactly the tables one process gives over the same inputs; the cluster runs eight batches
with captioning on (the ``hf`` captioner on a tiny random Qwen2.5-VL) through resident worker slots: each
slot attempt loads its model once (not once per batch), both gpu workers run embed and caption slots at the
same time, gpu-queue tasks stay off the default worker, and a gpu worker SIGKILLed in the middle of a batch
costs nothing (another slot or the retried task finishes the batch, nothing twice, no lease left).
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import S3_ENV_KEYS, TINY_CLIP_CONFIG, curate, curate_parallel
from tiny_vlm import build_tiny_qwen2_5_vl

REPO = Path(__file__).resolve().parents[1]
#: eight sources of two shots each (one batch per source: eight batches)
SHOTS = [[("testsrc2", 20), ("mandelbrot", 20)], [("smptebars", 20), ("red", 16)], [("gradient", 20), ("rgbtestsrc", 18)],
         [("mandelbrot", 18), ("testsrc2", 20)], [("rgbtestsrc", 20), ("smptebars", 20)], [("red", 18), ("gradient", 20)],
         [("smptebars", 18), ("mandelbrot", 20)], [("testsrc2", 18), ("red", 20)]]
SCORERS = ["technical", "alignment", "motion"]  # motion decodes clips: per batch, on the gpu workers
ENC_OPTS = {"frames": "2", "decoder": "ffmpeg"}  # ffmpeg frames: what the one-pass default decodes
#: the hf captioner's options besides its weights (greedy: the same captions in any batch, on any worker)
CAP_OPTS = {"frames": "2", "max_new_tokens": "8", "size": "64"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Eight tiny videos, their source list, a tiny random CLIP (model_config + weights) and a tiny random VLM
    (all under one directory: the cluster's CURATE_ALLOWED_DIRS)."""
    import csv

    import open_clip
    import torch

    from curate.samples import make_video

    d = tmp_path_factory.mktemp("inputs")
    rows = []
    for i, shots in enumerate(SHOTS):
        p = d / f"v{i}.mp4"
        make_video(p, shots, fps=10, size=(96, 64))
        rows.append({"url": str(p), "caption": f"video {i}: {shots[0][0]} then {shots[1][0]}"})
    lst = d / "sources.csv"
    with open(lst, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["url", "caption"])
        w.writeheader()
        w.writerows(rows)
    cfg = d / "curate-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    weights = d / "tiny_clip.pt"
    torch.save(open_clip.create_model(cfg.stem, pretrained=None).state_dict(), weights)
    vlm = build_tiny_qwen2_5_vl(d / "tiny-qwen2.5-vl")
    return {"dir": d, "list": lst, "options": {**ENC_OPTS, "model_config": str(cfg), "weights": str(weights)},
            "captioner_options": {**CAP_OPTS, "weights": str(vlm)}}


def _opts(options: dict) -> list[str]:
    return [a for k, v in options.items() for a in ("-o", f"{k}={v}")]


@pytest.fixture(scope="module")
def scored(inputs, tmp_path_factory):
    """One process, the whole root, stage after stage up to the scores (copied by the references below)."""
    root = tmp_path_factory.mktemp("reference") / "scored"
    curate("ingest", inputs["list"], "--root", root)
    curate("split", "--root", root, "--min-clip-s", "0.5", "--max-clip-s", "3")
    curate("embed", "--root", root, *_opts(inputs["options"]), "--device", "cpu", "--batch-size", "8")
    curate("score", "--root", root, *[a for s in SCORERS for a in ("-s", s)])
    return root


def _copy(root: Path, name: str) -> Path:
    import shutil

    return Path(shutil.copytree(root, root.parent / name))


@pytest.fixture(scope="module")
def plain_reference(scored):
    """The one-process run without captioning: what the sharded CLI must equal."""
    root = _copy(scored, "plain")
    curate("filter", "--root", root, "--subset", "s", "--min-sim", "-1", "--min-duration", "0.5")
    curate("publish", "--root", root, "--subset", "s", "--shard-size", "2")
    return root


@pytest.fixture(scope="module")
def reference(scored, inputs):
    """The one-process run of what the cluster runs: captions by the tiny VLM (greedy), embedded with the run's
    encoder (``clip_hf``), their alignment, and the subset with the generated captions."""
    root = _copy(scored, "captioned")
    curate("caption", "--root", root, "-c", "hf", *_opts(inputs["captioner_options"]), "--device", "cpu",
           "--batch-size", "8")
    curate("embed", "--root", root, *_opts(inputs["options"]), "--device", "cpu", "--batch-size", "8",
           "--caption", "captions:hf")
    curate("score", "--root", root, "-s", "alignment", "--encoder", "clip_hf")
    curate("filter", "--root", root, "--subset", "s", "--min-sim", "-1", "--min-duration", "0.5",
           "--encoder", "clip_hf", "--caption", "captions:hf")
    curate("publish", "--root", root, "--subset", "s", "--shard-size", "2")
    return root


# ----------------------------------------------------------------------------- comparing roots
def _raw(root, name: str) -> pa.Table:
    """Every row of a table as stored (the Lance dataset's rows, no dedup by key): what a duplicate would show in.
    ``root``: a local directory or a URL (read with Lance over the object store, as users would)."""
    import lance

    from curate.store import Root
    from curate.store.storage import lance_storage_options

    url = Root(root).url(name)
    return lance.dataset(url, storage_options=lance_storage_options(url)).to_table()


def _rows(table: pa.Table, key: str) -> list[dict]:
    t = table.drop_columns([c for c in ("updated_at", "seconds") if c in table.column_names])  # (timings)
    return sorted(t.to_pylist(), key=lambda r: r[key])


def _close(a, b, path: str) -> None:
    if isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= 1e-6, (path, a, b)
    elif isinstance(a, list) and isinstance(b, list) and a and isinstance(a[0], float):
        assert len(a) == len(b) and np.allclose(a, b, rtol=0, atol=1e-6), path
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), (path, sorted(a), sorted(b))
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    else:
        assert a == b, (path, a, b)


def assert_same_tables(root, ref, subset: str = "s", captions: bool = True) -> None:
    """sources, clips, embeddings (1e-6), scores, the generated captions (greedy: identical) and their embeddings,
    the published subset: equal to the reference's, no key twice. Either root may be a local directory or a URL
    (``s3://...``): both are read through Lance and the root's file API."""
    import io

    from curate.store import Root

    tables = [("sources", "source_id"), ("clips", "clip_id"), ("embeddings/clip", "clip_id"), ("scores", "clip_id")]
    if captions:
        tables += [("captions/hf", "clip_id"), ("embeddings/clip_hf", "clip_id")]
    for name, key in tables:
        got, want = _raw(root, name), _raw(ref, name)
        assert got.num_rows == len(set(got[key].to_pylist())), f"{name}: a key stored twice"
        assert sorted(got.column_names) == sorted(want.column_names), name
        g, w = _rows(got.select(sorted(got.column_names)), key), _rows(want.select(sorted(got.column_names)), key)
        assert [r[key] for r in g] == [r[key] for r in w], f"{name}: other keys"
        for a, b in zip(g, w):
            _close(a, b, f"{name}[{a[key]}]")
    r, ref_r, sub = Root(root), Root(ref), f"subsets/{subset}"
    got_ann, want_ann = r.read_parquet(f"{sub}/annotations.parquet"), ref_r.read_parquet(f"{sub}/annotations.parquet")
    for a, b in zip(_rows(got_ann, "clip_id"), _rows(want_ann, "clip_id"), strict=True):
        _close(a, b, f"annotations[{a['clip_id']}]")
    shards = r.ls(f"{sub}/shards", dirs=False)
    assert shards == ref_r.ls(f"{sub}/shards", dirs=False)
    for name in (s for s in shards if s.endswith(".tar")):
        with tarfile.open(fileobj=io.BytesIO(r.read_bytes(f"{sub}/shards/{name}"))) as a, \
                tarfile.open(fileobj=io.BytesIO(ref_r.read_bytes(f"{sub}/shards/{name}"))) as b:
            assert a.getnames() == b.getnames(), name
            for m in a.getnames():
                x, y = a.extractfile(m).read(), b.extractfile(m).read()
                if m.endswith(".json"):
                    _close(json.loads(x), json.loads(y), f"{name}/{m}")
                elif m.endswith(".npy"):
                    _close(np.load(io.BytesIO(x)).ravel().tolist(), np.load(io.BytesIO(y)).ravel().tolist(), m)
                else:
                    assert x == y, f"{name}/{m}"


# ----------------------------------------------------------------------------- the CLI, sharded
def test_sharded_cli_processes_equal_one_process(inputs, plain_reference, tmp_path):
    """2 processes split, embed and score one root together (--shard i/2), 2 cut the subset (--shard i/2):
    the same tables as one process, each source in exactly one shard."""
    root = tmp_path / "root"
    curate("ingest", inputs["list"], "--root", root)
    n = 2
    split = curate_parallel([["split", "--root", root, "--min-clip-s", "0.5", "--max-clip-s", "3", "--shard", f"{i}/{n}"]
                       for i in range(n)])
    assert sum(s["total"] for s in split) == len(SHOTS)  # every source in one shard
    emb = curate_parallel([["embed", "--root", root, *_opts(inputs["options"]), "--device", "cpu", "--batch-size", "8",
                      "--shard", f"{i}/{n}"] for i in range(n)])
    reference = plain_reference
    n_clips = len(_raw(reference, "clips"))
    assert sum(e["ok"] for e in emb) == n_clips and all(e["skipped"] == 0 for e in emb)
    curate_parallel([["score", "--root", root, "-s", "motion", "--shard", f"{i}/{n}"] for i in range(n)])
    assert not (root / "scores").exists()  # per-shard scores are staged, the shared table is not touched
    curate("score", "--root", root, *[a for s in SCORERS for a in ("-s", s)])  # merges them, runs the rest
    curate("filter", "--root", root, "--subset", "s", "--min-sim", "-1", "--min-duration", "0.5")
    curate_parallel([["publish", "--root", root, "--subset", "s", "--shard-size", "2", "--shard", f"{i}/2"] for i in range(2)])
    assert not (root / "subsets" / "s" / "annotations.parquet").exists()
    last = json.loads(curate("publish", "--root", root, "--subset", "s", "--shard-size", "2", "--json").stdout)
    assert last["skipped"] == last["total"] > 0  # the shard processes cut everything; this run only finalises
    assert_same_tables(root, reference, captions=False)

    ids = root / "ids.txt"  # --source-ids: an explicit batch file works the same way
    ids.write_text("# nothing left to do for these\n" + "\n".join(_raw(root, "sources")["source_id"].to_pylist()))
    again = json.loads(curate("embed", "--root", root, *_opts(inputs["options"]), "--device", "cpu",
                              "--source-ids", ids, "--json").stdout)
    assert again["total"] == 0 and again["skipped"] == n_clips


def test_shard_option_is_checked():
    p = curate("embed", "--root", "/nonexistent-root", "--shard", "3/3", check=False)
    assert p.returncode != 0 and "0 <= I < N" in (p.stdout + p.stderr)


# ----------------------------------------------------------------------------- the cluster
@pytest.fixture(scope="module")
def cluster(inputs, s3, tmp_path_factory):
    """The cluster, with two roots: ``s3://curate-test/run`` in the moto bucket (every worker reaches it through
    the usual AWS_* variables, nothing else) and a local ``fault`` root for the SIGKILL test."""
    from curate.airflow.localcluster import LocalCluster, find_binaries

    if find_binaries() is None:
        pytest.skip("redis-server and PostgreSQL's initdb/postgres are not installed (scripts/system-deps.sh)")
    base = tmp_path_factory.mktemp("cluster")
    roots = base / "roots"
    roots.mkdir()
    env = {"CURATE_ROOTS": f"{s3}/run,{roots / 'fault'}",  # commas around URLs (they hold ':')
           "CURATE_GPU_SLOTS": "2",  # one resident slot per gpu worker (the gpu pool's size)
           "CURATE_ALLOWED_DIRS": str(inputs["dir"]), "CURATE_RETRY_DELAY_S": "1",
           "CURATE_INBOX_SCHEDULE": "none",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           **{k: os.environ[k] for k in S3_ENV_KEYS}}  # the endpoint and keys of the bucket, as a deployment sets them
    c = LocalCluster(base, dags_folder=REPO / "dags", gpu_workers=2, default_concurrency=2, heartbeat_timeout_s=15,
                     env=env)
    c.start()
    c.roots = roots
    c.bucket_root = f"{s3}/run"
    yield c
    c.stop()


def _conf(inputs, root: Path) -> dict:
    return {"sources": str(inputs["list"]), "root": str(root), "subset": "s", "encoder": "clip",
            "encoder_options": inputs["options"], "device": "cpu", "embed_batch_size": 8, "min_sim": -1.0,
            "min_duration": 0.5, "min_clip_s": 0.5, "max_clip_s": 3.0, "batch_size": 1, "shard_size": 2,
            "scorers": SCORERS,  # one_pass, the default: each embed slot splits and embeds in one decode
            "captioner": "hf", "captioner_options": inputs["captioner_options"]}


def _overlap(a: dict, b: dict) -> bool:
    return a["start_date"] < b["end_date"] and b["start_date"] < a["end_date"]


def _logs(c) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(c.logs.glob("*.log")))


def _assert_slots(root, n_batches: int, retried: bool = False) -> dict[str, list[dict]]:
    """From the run's board (ROOT/.work/<board>/<stage>/workers/*.json): every batch embedded and captioned once,
    none running or failed, every slot attempt of each GPU stage loaded its model once (model loads = slot
    attempts, not batches), no lease left; the workers' stats per stage."""
    from curate.store import Root
    from curate.workers import boards

    [board] = boards(root)
    out = {}
    # the models of a slot: embed (one_pass) the encoder; caption the VLM and the encoder of the generated captions
    for stage, models in (("embed", 1), ("caption", 2)):
        s = board.summary(stage)
        assert (s["batches"], s["done"], s["failed"], s["running"]) == (n_batches, n_batches, 0, 0), (stage, s)
        stats = board.stats(stage)
        assert all(w["model_loads"] == models for w in stats), (stage, stats)  # each once, whatever the batches
        assert s["model_loads"] == models * len(stats) and len(stats) >= 2, (stage, stats)
        if not retried:  # one load per slot attempt, not one per batch
            assert len(stats) < n_batches, (stage, stats)
        assert len({w["worker"].split("-")[0] for w in stats}) == 2, (stage, stats)  # both slots
        done = sorted(b for w in stats for b in w["batches_done"])
        assert done == sorted(set(done)) and len(done) == n_batches, (stage, stats)  # each batch once
        out[stage] = stats
    assert not [n for n in Root(root).ls(".locks", dirs=False) if n.startswith("work.")]  # every lease released
    return out


# the cluster's start (migrate, parse) counts against the first test: give both room on a busy machine
@pytest.mark.timeout(1800)
def test_cluster_spreads_batches_over_gpu_workers_and_equals_one_process(cluster, inputs, reference):
    """The root is in the bucket: three workers write its tables, media and shards at once through S3 alone."""
    from curate.store import Root

    run_id = cluster.trigger("curate_pipeline", _conf(inputs, cluster.bucket_root), "scale-out")
    state = cluster.wait_run("curate_pipeline", run_id, timeout_s=1200)
    tis = cluster.task_instances("curate_pipeline", run_id)
    assert state == "success", [(t["task_id"], t["map_index"], t["state"], t["hostname"]) for t in tis]
    embeds = [t for t in tis if t["task_id"] == "embed"]  # resident slots, mapped over slots, not batches
    assert len({t["map_index"] for t in embeds}) == 2 and {t["state"] for t in embeds} == {"success"}
    assert {t["hostname"] for t in embeds} == {"gpu1", "gpu2"}  # both gpu workers ran an embed slot
    assert any(_overlap(a, b) for a in embeds for b in embeds if a["hostname"] != b["hostname"]), \
        "no two embed slots ran at the same time"
    for t in (t for t in tis if t["state"] != "skipped"):  # (a skipped task ran nowhere) gpu tasks on gpu workers only
        assert (t["queue"] == "gpu") == (t["hostname"] in ("gpu1", "gpu2")), t
        assert t["hostname"] in ("default", "gpu1", "gpu2"), t
    assert {t["task_id"] for t in tis if t["queue"] == "gpu"} == {"embed", "score_clips", "caption_clips"}
    captions = [t for t in tis if t["task_id"] == "caption_clips"]
    assert len({t["map_index"] for t in captions}) == 2 and {t["state"] for t in captions} == {"success"}
    assert {t["hostname"] for t in captions} == {"gpu1", "gpu2"}  # both gpu workers ran a captioning slot
    assert any(_overlap(a, b) for a in captions for b in captions if a["hostname"] != b["hostname"]), \
        "no two caption slots ran at the same time"
    _assert_slots(cluster.bucket_root, len(SHOTS))
    assert sum(t["task_id"] == "maintain" for t in tis) == 1 and sum(t["task_id"] == "score" for t in tis) == 1
    assert_same_tables(cluster.bucket_root, reference)  # read from the bucket (Lance over S3, fsspec)
    bucket = Root(cluster.bucket_root)
    assert len(bucket.ls("media", dirs=False)) >= len(SHOTS) and bucket.exists("subsets/s/README.md")
    assert not bucket.ls(".locks", dirs=False)  # every lease released
    assert not (cluster.roots / "run").exists() and not list(cluster.base.rglob("curate-test"))  # nothing local
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()  # the credentials are never logged
    leaked = [p for p in cluster.base.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert not leaked, leaked


@pytest.mark.timeout(1200)
def test_cluster_survives_a_gpu_worker_killed_mid_embed(cluster, inputs, reference):
    """SIGKILL a gpu worker (and the slot it runs) while its slot holds a batch: the scheduler notices the missing
    heartbeats, Airflow retries the slot on another gpu worker, another slot (or the retry) takes the batch over,
    and the tables (captions included) are as if nothing happened: no row twice, no lease left."""
    killed: dict = {}

    def kill_when_gpu2_embeds() -> None:
        if killed:
            return
        rows = cluster.query("select map_index from task_instance where dag_id = 'curate_pipeline' and run_id = %s "
                             "and task_id = 'embed' and state = 'running' and hostname = 'gpu2'", (run_id,))
        locks = cluster.roots / "fault" / ".locks"
        holders = set()
        for n in (os.listdir(locks) if locks.is_dir() else []):
            if n.startswith("work.") and ".embed." in n:
                try:
                    holders.add(json.loads((locks / n).read_text())["pid"])
                except (OSError, ValueError, KeyError):
                    pass
        if rows and holders:  # a slot holds a batch: kill gpu2 (mid-batch when the holder is gpu2's slot)
            killed["map_index"] = rows[0][0]
            killed["pids"] = cluster.kill_worker("gpu2")
            killed["mid_batch"] = bool(holders & set(killed["pids"]))
            cluster.start_worker("gpu3", "gpu")  # a replacement machine joins (as an autoscaler would)

    run_id = cluster.trigger("curate_pipeline", _conf(inputs, cluster.roots / "fault"), "fault")
    state = cluster.wait_run("curate_pipeline", run_id, timeout_s=1200, on_poll=kill_when_gpu2_embeds)
    tis = cluster.task_instances("curate_pipeline", run_id)
    assert killed, "gpu2 never ran an embed task (nothing was killed)"
    assert state == "success", _logs(cluster)
    tries = [t for t in tis if t["task_id"] == "embed" and t["map_index"] == killed["map_index"]]
    assert [t["hostname"] for t in tries][0] == "gpu2" and tries[0]["state"] == "failed"
    assert tries[-1]["state"] == "success" and tries[-1]["hostname"] in ("gpu1", "gpu3") and len(tries) >= 2
    for t in tis:  # still: gpu-queue tasks only on gpu workers
        assert (t["queue"] == "gpu") == (t["hostname"] in ("gpu1", "gpu2", "gpu3")), t
    stats = _assert_slots(cluster.roots / "fault", len(SHOTS), retried=True)
    if killed["mid_batch"]:  # the killed slot's batch was finished by another slot or by its retry
        assert any(w["took_over"] for w in stats["embed"]), "no worker took the killed slot's batch over"
    assert_same_tables(cluster.roots / "fault", reference)  # nothing lost, nothing twice


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
