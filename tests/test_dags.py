"""The curate DAGs on a real (SQLite) Airflow 3 metadata DB, run with ``dag.test()``."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile

import airflow_helpers as h  # first: it configures Airflow before anything imports it
import pytest

DAG_IDS = {"curate_pipeline", "curate_inbox", "curate_refilter"}
GPU_TASKS = {"embed", "score_clips", "caption_clips"}  # resident worker slots on the GPU workers, mapped over slots


@pytest.fixture(scope="module")
def bag():
    h.migrate()
    return h.dagbag()


def test_dagbag_has_no_import_errors(bag):
    assert bag.import_errors == {}
    assert DAG_IDS <= set(bag.dag_ids)
    for dag_id in DAG_IDS:
        assert "curate" in bag.get_dag(dag_id).tags


def test_dag_files_import_nothing_heavy():
    """Parsing the DAG folder must not import torch/pandas/pyarrow/Lance, the tables or a stage (paid on every
    re-parse; ``curate.store.storage``, the light file API, is fine)."""
    code = (
        "import sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag()\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "heavy = sorted(m for m in ('torch', 'pandas', 'pyarrow', 'numpy', 'open_clip', 'lance',"
        " 'curate.store.tables', 'curate.store.root', 'curate.stages.ingest', 'curate.stages.embed') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([h.PYTHON, "-c", code], check=False, capture_output=True, text=True, env=os.environ, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY=\n" in out.stdout, out.stdout


def _validate(dag, conf: dict) -> dict:
    import copy

    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


def test_params_are_validated_at_trigger(bag):
    from airflow.sdk.exceptions import ParamValidationError

    dag = bag.get_dag("curate_pipeline")
    good = h.pipeline_conf(h.ROOTS / "other")
    assert _validate(dag, good)["batch_size"] == 2
    for bad in ({"subset": "../../etc"}, {"batch_size": 0}, {"detector": "magic"},
                {"encoder_options": "model=x"}, {"min_sim": "high"}, {"sources": ""}):
        with pytest.raises(ParamValidationError):
            _validate(dag, {**good, **bad})
    with pytest.raises(ParamValidationError):  # the real trigger path refuses it before any task runs
        dag.test(run_conf={**good, "subset": "../../etc"})


def _serialized(dag):
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(json.loads(json.dumps(DagSerialization.to_dict(dag))))


def test_gpu_queue_and_pool_only_on_gpu_tasks(bag):
    from airflow.configuration import conf

    sdag = _serialized(bag.get_dag("curate_pipeline"))
    default_queue = conf.get("operators", "default_queue")
    seen = set()
    for t in sdag.tasks:
        seen.add(t.task_id)
        if t.task_id in GPU_TASKS:
            assert (t.queue, t.pool, t.pool_slots) == ("gpu", "gpu", 1), t.task_id
        else:
            assert t.queue == default_queue and t.pool == "default_pool", t.task_id
        assert getattr(t, "executor", None) is None, t.task_id
    assert GPU_TASKS <= seen and {"register", "batch.ingest", "batch.split", "maintain", "score", "filter", "cut",
                                  "publish"} <= seen
    for dag_id in ("curate_inbox", "curate_refilter"):
        assert all(t.pool == "default_pool" for t in _serialized(bag.get_dag(dag_id)).tasks)


def test_gpu_queue_and_pool_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CURATE_GPU_QUEUE", "a100")
    monkeypatch.setenv("CURATE_GPU_POOL", "gpus")
    monkeypatch.setenv("CURATE_GPU_POOL_SLOTS", "2")
    dag = h.dagbag().get_dag("curate_pipeline")
    got = {t.task_id: (t.queue, t.pool, t.pool_slots) for t in dag.tasks}
    assert got["embed"] == got["score_clips"] == got["caption_clips"] == ("a100", "gpus", 2)
    assert got["filter"][1] == "default_pool"


def test_batches_respect_max_map_length():
    from curate.airflow.tasks import make_batches

    ids = [f"s{i}" for i in range(1000)]
    b = make_batches(ids, 7, max_len=50)
    assert len(b) <= 50 and [s for x in b for s in x["source_ids"]] == ids
    assert [x["index"] for x in b] == list(range(len(b)))
    assert len(make_batches(ids, 300, max_len=1024)) == 4
    assert make_batches([], 5) == []


def test_pipeline_end_to_end():
    import pyarrow.parquet as pq

    from curate.store import Root

    run = h.pipeline_run()
    assert run["state"] == "success"
    tis = {(t, m): (label, state) for t, m, label, state in h.task_instances("curate_pipeline", run["run_id"])}
    # batches of 2 sources: batch 2 holds only a refused path, so it fails (fast) and the run goes on
    assert tis[("batch.ingest", 0)] == ("batch 0 (2 sources)", "success")
    assert tis[("batch.ingest", 1)] == ("batch 1 (2 sources)", "success")
    assert tis[("batch.ingest", 2)] == ("batch 2 (1 source)", "failed")
    assert tis[("batch.split", 0)] == ("batch 0 (1 source ingested)", "success")
    assert tis[("batch.split", 2)][1] == "upstream_failed"
    # the GPU stages run as resident slots (gpu_slots=2): each loads its model once, claims batches as soon as
    # they are split; batch 2 never got split, so it is never claimed
    for m in (0, 1):
        assert tis[("embed", m)] == (f"slot {m}/2", "success") and tis[("score_clips", m)][1] == "success"
    slots = h.xcom_values("curate_pipeline", run["run_id"], "embed")
    assert all(s["model_loads"] == 1 for s in slots)  # once per slot attempt, however many batches it took
    summary = slots[-1]["summary"]  # batch 2 was never split: never ready, not failed here
    assert (summary["batches"], summary["done"], summary["failed"], summary["running"]) == (3, 2, 0, 0)
    assert 0 < summary["busy"] <= 1
    for task_id in ("register", "maintain", "score", "filter", "publish"):
        assert tis[(task_id, -1)][1] == "success", task_id
    assert tis[("cut", 0)] == ("shards 0/2", "success") and tis[("cut", 1)][1] == "success"  # one per shard

    root = Root(run["root"])
    src = root.sources.read()
    kinds = sorted(src.loc[src["status"] == "error", "error_kind"])
    assert kinds == ["not_allowed", "not_allowed", "not_found"]  # /etc/* refused, missing file recorded
    assert (src["status"] == "ok").sum() == 2

    sub = root.subset_dir("e2e")
    shards = sorted((sub / "shards").glob("*.tar"))
    assert shards and (sub / "README.md").is_file() and (sub / "annotations.parquet").is_file()
    names = []
    for s in shards:
        with tarfile.open(s) as tar:
            names += tar.getnames()
    assert sum(n.endswith(".mp4") for n in names) == 4 and sum(n.endswith(".npy") for n in names) == 4
    assert pq.read_table(sub / "annotations.parquet").num_rows == 4

    events = h.asset_events("curate://e2e/")
    assert len(events) == 1 and events[0]["source_run_id"] == run["run_id"]
    extra = events[0]["extra"]
    assert extra["published"] == 4 and extra["kept"] == 4 and extra["shards"] == 2
    assert extra["thresholds"] == {"min_sim": -1.0, "min_duration": 0.5}
    assert extra["root"] == str(run["root"]) and extra["subset"] == "e2e"


def test_pipeline_refuses_paths_outside_the_allowed_dirs_and_roots():
    from curate.store import Root

    other = h.ROOTS / "other"
    state, run_id = h.run_dag("curate_pipeline", h.pipeline_conf(other, sources="/etc/passwd"))
    assert state == "failed"
    tis = {t: s for t, _, _, s in h.task_instances("curate_pipeline", run_id)}
    assert tis["register"] == "failed" and tis["publish"] == "upstream_failed"
    assert not Root(other).sources.exists()

    outside = h.BASE / "not-a-configured-root"
    state, run_id = h.run_dag("curate_pipeline", h.pipeline_conf(outside))
    assert state == "failed" and not outside.exists()


def test_refilter_publishes_a_new_subset_without_recomputing():
    import numpy as np

    from curate.store import Root

    run = h.pipeline_run()
    root = Root(run["root"])
    emb_before = {p.name: p.stat().st_mtime_ns for p in (root.path / "embeddings").rglob("*")}
    scores_before = root.scores.version()
    sims = np.sort(root.scores.read()["clip_sim"].to_numpy())
    threshold = float((sims[1] + sims[2]) / 2)  # keeps the best two of four

    state, run_id = h.run_dag("curate_refilter", {"root": str(root.path), "subset": "strict", "min_sim": threshold,
                                                  "min_duration": None, "max_duration": None})
    assert state == "success"
    assert {t for t, *_ in h.task_instances("curate_refilter", run_id)} == {"target", "filter", "publish"}
    summary = json.loads((root.subset_dir("strict") / "filter.json").read_text())
    assert (summary["total"], summary["kept"]) == (4, 2)
    assert len(list((root.subset_dir("strict") / "shards").glob("*.tar"))) == 1
    assert {p.name: p.stat().st_mtime_ns for p in (root.path / "embeddings").rglob("*")} == emb_before
    assert root.scores.version() == scores_before
    extra = h.asset_events("curate://strict/")[-1]["extra"]
    assert extra["thresholds"] == {"min_sim": threshold} and extra["published"] == 2


def test_refilter_takes_percentile_where_and_per_source_rules():
    from curate.store import Root

    root = Root(h.pipeline_run()["root"])
    state, _ = h.run_dag("curate_refilter", {"root": str(root.path), "subset": "pct", "min_sim": None,
                                             "min_duration": None, "max_duration": None,
                                             "filters": {"top_percent": 50, "where": ["duration_s > 0"],
                                                         "max_per_source": 1}})
    assert state == "success"
    summary = json.loads((root.subset_dir("pct") / "filter.json").read_text())
    assert [r["kind"] for r in summary["rules"]] == ["where", "top_percent", "per_source"]
    sc = root.scores.read().sort_values(["clip_sim", "clip_id"], ascending=[False, True])
    assert summary["kept"] == sc.head(2).source_id.nunique()  # the top 2 of 4, then at most one per source
    with pytest.raises(Exception, match="filters"):  # unknown rule names are refused at trigger time
        h.run_dag("curate_refilter", {"root": str(root.path), "subset": "bad", "filters": {"min_simm": 1}})


def _inbox_runs() -> list[tuple[str, dict]]:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as s:
        runs = s.query(DagRun).filter(DagRun.dag_id == "curate_pipeline", DagRun.run_id.like("inbox__%")).all()
        return [(r.run_id, dict(r.conf or {})) for r in runs]


def test_inbox_runs_each_list_once():
    root = h.ROOTS / "inbox"
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    a, _ = h.videos()
    h.write_list(inbox / "first.csv", [{"url": str(a), "caption": "a test pattern"}])
    (inbox / "same-content.csv").write_bytes((inbox / "first.csv").read_bytes())  # one list, two names
    (inbox / "notes.txt").write_text("not a list")
    conf = {"root": str(root), "subset": "daily", "pipeline_conf": {"min_sim": 0.1}, "settle_s": 0}

    state, _ = h.run_dag("curate_inbox", conf)
    assert state == "success"
    runs = _inbox_runs()
    assert len(runs) == 1
    run_id, run_conf = runs[0]
    processed = inbox / ".processed"
    markers = [json.loads(p.read_text()) for p in processed.glob("*.json")]
    assert len(markers) == 1 and markers[0]["state"] == "triggered" and markers[0]["run_id"] == run_id
    assert run_conf["sources"] == markers[0]["copy"] and run_conf["root"] == str(root)
    assert run_conf["subset"] == "daily" and run_conf["min_sim"] == 0.1
    assert (processed / f"{markers[0]['sha256']}.csv").read_bytes() == (inbox / "first.csv").read_bytes()

    state, _ = h.run_dag("curate_inbox", conf)  # nothing new
    assert state == "success" and _inbox_runs() == runs

    # a crash after the claim but before the trigger was confirmed: the claim is re-driven, no second run
    marker = processed / f"{markers[0]['sha256']}.json"
    marker.write_text(json.dumps({**markers[0], "state": "claimed"}))
    state, _ = h.run_dag("curate_inbox", conf)
    assert state == "success" and _inbox_runs() == runs
    assert json.loads(marker.read_text())["state"] == "triggered"

    h.write_list(inbox / "second.csv", [{"url": str(a), "caption": "another caption"}])
    state, _ = h.run_dag("curate_inbox", conf)
    assert state == "success" and len(_inbox_runs()) == 2


# ----------------------------------------------------------------------------- a root in a bucket
@pytest.fixture(scope="module")
def bucket_inbox(s3):
    """A root in the moto bucket with CURATE_ROOTS naming it: two lists dropped into its inbox (same content,
    two names) and a text file, then one curate_inbox run."""
    from curate.store import Root

    root = f"{s3}/inbox-root"
    old = os.environ["CURATE_ROOTS"]
    os.environ["CURATE_ROOTS"] = f"{old},{root}"  # commas around URLs (they hold ':')
    try:
        r = Root(root)
        a, b = h.videos()
        lst = h.write_list(h.BASE / "bucket-list.csv", [{"url": str(a), "caption": "a test pattern"},
                                                        {"url": str(b), "caption": "color bars then red"}])
        r.put_file(lst, "inbox/first.csv")
        r.put_file(lst, "inbox/same-content.csv")
        r.write_bytes("inbox/notes.txt", "not a list")
        extra = {k: v for k, v in h.pipeline_conf(h.BASE).items() if k not in ("sources", "root", "subset")}
        conf = {"root": root, "subset": "daily", "pipeline_conf": extra, "settle_s": 0}
        state, _ = h.run_dag("curate_inbox", conf)
        yield {"root": root, "r": r, "list": lst, "conf": conf, "state": state}
    finally:
        os.environ["CURATE_ROOTS"] = old


def _bucket_runs(root: str) -> list[tuple[str, dict]]:
    return [(i, c) for i, c in _inbox_runs() if c.get("root") == root]


def test_inbox_in_a_bucket_claims_each_list_once(bucket_inbox):
    """ROOT/inbox in object storage: the copy and the claim marker (a put-if-absent create) are objects in the
    bucket; a second scan and a re-driven claim start nothing new."""
    root, r = bucket_inbox["root"], bucket_inbox["r"]
    assert bucket_inbox["state"] == "success"
    runs = _bucket_runs(root)
    assert len(runs) == 1
    run_id, run_conf = runs[0]
    names = r.ls("inbox/.processed", dirs=False)
    markers = [r.read_json(f"inbox/.processed/{n}") for n in names if n.endswith(".json")]
    assert len(markers) == 1 and markers[0]["state"] == "triggered" and markers[0]["run_id"] == run_id
    sha = markers[0]["sha256"]
    assert sorted(names) == sorted([f"{sha}.csv", f"{sha}.json"])  # nothing temporary left in the bucket
    assert run_conf["sources"] == markers[0]["copy"] == f"{root}/inbox/.processed/{sha}.csv"
    assert run_conf["root"] == root and run_conf["subset"] == "daily" and run_conf["min_sim"] == -1.0
    assert r.read_bytes(f"inbox/.processed/{sha}.csv") == bucket_inbox["list"].read_bytes()

    state, _ = h.run_dag("curate_inbox", bucket_inbox["conf"])  # nothing new
    assert state == "success" and _bucket_runs(root) == runs
    r.write_bytes(f"inbox/.processed/{sha}.json", json.dumps({**markers[0], "state": "claimed"}))  # a crash
    state, _ = h.run_dag("curate_inbox", bucket_inbox["conf"])
    assert state == "success" and _bucket_runs(root) == runs
    assert r.read_json(f"inbox/.processed/{sha}.json")["state"] == "triggered"


def test_pipeline_reads_the_claimed_list_from_the_bucket_and_writes_every_table_there(bucket_inbox):
    """The triggered run's conf, run: register reads the list from the bucket (a URL under ROOT/inbox), the
    batch tasks, maintain, cut and publish write the root in the bucket; refilter and the UI plugin read it."""
    from airflow.sdk.exceptions import AirflowFailException
    from fastapi.testclient import TestClient

    from curate.airflow import settings as cs
    from curate.airflow.plugin import app

    root, r = bucket_inbox["root"], bucket_inbox["r"]
    (_, run_conf), = _bucket_runs(root)
    state, run_id = h.run_dag("curate_pipeline", run_conf)
    assert state == "success", h.task_instances("curate_pipeline", run_id)
    assert sorted(r.sources.read()["status"]) == ["ok", "ok"]
    assert r.ls("media", dirs=False) and not r.ls(".locks", dirs=False)  # media in the bucket, leases released
    shards = [n for n in r.ls("subsets/daily/shards", dirs=False) if n.endswith(".tar")]
    assert shards and r.exists("subsets/daily/annotations.parquet") and r.exists("subsets/daily/README.md")
    extra = h.asset_events("curate://daily/")[-1]["extra"]
    assert extra["root"] == root and extra["published"] == r.read_parquet("subsets/daily/annotations.parquet").num_rows

    state, _ = h.run_dag("curate_refilter", {"root": root, "subset": "strict", "min_sim": 2.0,
                                             "min_duration": None, "max_duration": None})
    assert state == "success" and r.read_json("subsets/strict/filter.json")["kept"] == 0

    for bad in (f"{root}-elsewhere/inbox/x.csv", f"{root}/inbox/../../x.csv", f"{root}/x.csv"):
        with pytest.raises(AirflowFailException, match="source list"):
            cs.check_source_list(root, bad)
    state, run_id = h.run_dag("curate_pipeline", {**run_conf, "sources": f"{root}/sources/x.csv"})
    assert state == "failed" and {t: s for t, _, _, s in h.task_instances("curate_pipeline", run_id)}["register"] \
        == "failed"
    old = os.environ.pop("CURATE_ALLOWED_DIRS")
    try:  # no allowed directories: a run on a bucket root reads no local file at all
        assert cs.local_access(root) == {"allow_local": False, "local_dirs": []}
    finally:
        os.environ["CURATE_ALLOWED_DIRS"] = old

    client = TestClient(app)
    body = client.get("/").text
    assert "<h2>inbox-root</h2>" in body and f"<code>{root}</code>" in body
    assert "<td>ingest</td><td>2</td><td>0</td>" in body and "/subsets/daily'>daily</a>" in body
    page = client.get("/roots/inbox-root/subsets/daily")
    assert page.status_code == 200 and "hist/clip_sim.png" in page.text and "<h1>daily</h1>" in page.text
    png = client.get("/roots/inbox-root/subsets/daily/hist/clip_sim.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    found = client.get("/roots/inbox-root/subsets/daily/search", params={"q": "a test pattern", "k": 3})
    assert found.status_code == 200 and "<code>" in found.text.split("<th>time</th>")[1], found.text[-1500:]


def test_refilter_takes_the_root_from_the_triggering_asset_event(monkeypatch):
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from curate.airflow.tasks import triggering_root

    main = str(h.ROOTS / "main")
    ctx = {"triggering_asset_events": {"curate://daily": [SimpleNamespace(extra={"root": main, "subset": "daily"})]}}
    assert triggering_root(ctx) == (main, "daily") and triggering_root({}) == (None, None)
    target = h.dagbag().get_dag("curate_refilter").get_task("target").python_callable
    monkeypatch.setitem(target.__globals__, "get_current_context", lambda: ctx)
    assert target(params={"root": "/elsewhere", "subset": "strict"}) == main
    with pytest.raises(AirflowFailException, match="re-trigger"):  # publishing "daily" would trigger itself
        target(params={"root": "/elsewhere", "subset": "daily"})


def test_pipeline_runs_another_encoder_by_name():
    """The same DAG with encoder=viclip (the parity fixture's tiny checkpoint, copied under the allowed dirs)."""
    import shutil
    from pathlib import Path

    from curate.store import Root

    fixture = Path(os.environ.get("CURATE_PARITY_DIR", h.REPO.parent / "shared" / "fixtures" / "parity")) / "viclip"
    if not fixture.is_dir():
        pytest.skip("ViCLIP parity fixture not available")
    models = h.MODELS / "viclip"
    models.mkdir(parents=True, exist_ok=True)
    for f in ("viclip_tiny.pth", "config.json"):
        shutil.copy(fixture / f, models / f)
    root = h.ROOTS / "other"  # one of CURATE_ROOTS: a run may only write there
    conf = h.pipeline_conf(root, subset="vic", encoder="viclip",
                           encoder_options={"weights": str(models / "viclip_tiny.pth"),
                                            "config": str(models / "config.json"), "image_size": "64"})
    state, run_id = h.run_dag("curate_pipeline", conf)
    assert state == "success"
    assert "viclip_sim" in Root(root).scores.read().columns
    assert (Root(root).subset_dir("vic") / "README.md").read_text().count("encoder: `viclip`") == 1


def test_pipeline_one_pass_splits_and_embeds_on_the_gpu_task():
    """one_pass: the split tasks leave their batches alone, the embed task runs `curate process`; the
    subset is published as with split + embed."""
    from curate.store import Root

    root = h.ROOTS / "onepass"
    state, run_id = h.run_dag("curate_pipeline", h.pipeline_conf(root, subset="one", one_pass=True, decode_workers=2))
    assert state == "success"
    r = Root(root)
    clips = r.clips.read()
    assert len(clips) > 0 and set(clips.splitter) == {"content"}
    emb = r.embeddings("clip").read()
    assert set(emb.clip_id) == set(clips[clips.status == "ok"].clip_id) and set(emb.status) == {"ok"}
    assert (r.subset_dir("one") / "annotations.parquet").exists()
    split_out = h.xcom_values("curate_pipeline", run_id, "batch.split")
    assert split_out and all(x["one_pass"] for x in split_out)  # the split tasks did not split
    slots = h.xcom_values("curate_pipeline", run_id, "embed")  # one per slot: its stats and the stage's summary
    assert all(x["model_loads"] == 1 for x in slots) and max(x["summary"]["done"] for x in slots) == 2


def test_pipeline_captions_clips_when_a_captioner_is_given():
    """captioner=hf on a tiny random Qwen2.5-VL (real format): the caption task (GPU queue) captions every clip
    and embeds the generated captions; score, filter and publish use them, and the card and the published
    JSON carry them beside the source captions."""
    import pandas as pd
    from tiny_vlm import build_tiny_qwen2_5_vl

    from curate.store import Root

    model = h.MODELS / "tiny-qwen2.5-vl"
    if not (model / "config.json").exists():
        build_tiny_qwen2_5_vl(model)
    root = h.ROOTS / "captioned"
    conf = h.pipeline_conf(root, subset="cap", captioner="hf",
                           captioner_options={"weights": str(model), "frames": 2, "max_new_tokens": 4, "size": 64})
    state, run_id = h.run_dag("curate_pipeline", conf)
    assert state == "success"
    tis = {t: s for t, m, _, s in h.task_instances("curate_pipeline", run_id) if m == -1}
    assert tis["caption"] == "success" and tis["publish"] == "success"
    (captioned,) = h.xcom_values("curate_pipeline", run_id, "caption")
    assert captioned["embedding_name"] == "clip_hf" and captioned["caption"] == "captions:hf"
    r = Root(root)
    caps = r.captions("hf").read()
    clips = r.clips.read()
    assert set(caps.clip_id) == set(clips[clips.status == "ok"].clip_id)
    assert set(caps.model) == {"Qwen2_5_VLForConditionalGeneration"} and (caps.tokens <= 4).all()
    ok = caps[caps.status == "ok"]
    assert len(ok) >= 1 and caps.error[caps.status == "error"].str.len().gt(0).all()
    assert set(r.embeddings("clip_hf").read().clip_id) == set(ok.clip_id)
    assert "clip_hf_sim" in r.scores.read().columns
    summary = json.loads((r.subset_dir("cap") / "filter.json").read_text())
    assert summary["options"]["caption"] == "captions:hf" and summary["kept"] == len(ok)
    ann = pd.read_parquet(r.subset_dir("cap") / "annotations.parquet")
    assert set(ann.clip_id) == set(ok.clip_id)
    assert (ann.caption == ann.caption_hf).all() and ann.source_caption.notna().all()
    with tarfile.open(sorted((r.subset_dir("cap") / "shards").glob("*.tar"))[0]) as tar:
        rec = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".json"))).read())
    assert rec["caption"] == rec["captions"]["hf"] and rec["source_caption"]
    card = (r.subset_dir("cap") / "README.md").read_text()
    assert "### captions/hf (the `caption` field)" in card and "- captioner: `hf`" in card


def test_pipeline_runs_clustered_dedup_as_mapped_groups_of_clusters():
    """With the dedup scorer clustered: score runs without it, dedup_plan plans once, dedup_group runs one mapped
    task per group of clusters (own files), dedup_merge writes dup_sim/dup_of, filter uses them."""
    from curate.store import Root

    root = h.ROOTS / "dedup"
    conf = h.pipeline_conf(root, subset="dd", scorers=["technical", "alignment", "dedup"],
                           scorer_options={"dedup": {"method": "clustered", "k": "2"}}, dedup_groups=2,
                           filters={"max_dup_sim": 0.999})
    state, run_id = h.run_dag("curate_pipeline", conf)
    assert state == "success"
    tis = {(t, m): (label, st) for t, m, label, st in h.task_instances("curate_pipeline", run_id)}
    assert tis[("dedup_plan", -1)][1] == "success" and tis[("dedup_merge", -1)][1] == "success"
    assert [tis[("dedup_group", m)] for m in (0, 1)] == [("clusters 0/2", "success"), ("clusters 1/2", "success")]
    r = Root(root)
    scores = r.scores.read()
    assert scores["dup_sim"].notna().all() and (scores["dup_sim"] == -1).sum() >= 1
    plan = r.read_json("embeddings/clip/_dedup/plan.json")
    assert plan["complete"] and plan["k"] == 2 and plan["groups"] == 2
    assert sorted(r.ls(f"embeddings/clip/_dedup/parts/{plan['plan_id']}")) and \
        len(r.ls(f"embeddings/clip/_dedup/parts/{plan['plan_id']}")) == 2
