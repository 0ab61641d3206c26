"""Dataset roots in an S3 bucket: a real S3 API server (moto's standalone server) on 127.0.0.1, talked to
over HTTP by the real clients (Lance's object store, s3fs, boto3)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BUCKET, MOTO, curate

pytest.importorskip("s3fs")
if not Path(MOTO).exists():
    pytest.skip("moto_server (pip install 'moto[server]') is not installed", allow_module_level=True)


def _fs():
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem()


# ------------------------------------------------------------------------------------------ the pipeline
STAGES = ["ingest", "split", "embed", "score", "filter", "publish"]


def _run_stage(root, source_list, tiny_clip, stage):
    from curate.stages.embed import embed
    from curate.stages.filter import filter_clips
    from curate.stages.ingest import ingest
    from curate.stages.publish import publish
    from curate.stages.score import score
    from curate.stages.split import split

    {"ingest": lambda: ingest(root, source_list, flush_every=1),
     "split": lambda: split(root, min_clip_s=0.5, max_clip_s=2.0),
     "embed": lambda: embed(root, "clip", options=tiny_clip, device="cpu", batch_size=2, flush_every=2),
     "score": lambda: score(root),
     "filter": lambda: filter_clips(root, "all", min_duration=0.5),
     "publish": lambda: publish(root, "all", shard_size=2)}[stage]()


def _pipeline(root, source_list, tiny_clip, start="ingest"):
    for stage in STAGES[STAGES.index(start):]:
        _run_stage(root, source_list, tiny_clip, stage)


def _tables(root) -> dict:
    """Every table and published file of a root (local or remote), read through the public API."""
    from curate.store import Root

    r = Root(root)
    out = {}
    for name, key in (("sources", "source_id"), ("clips", "clip_id"), ("embeddings/clip", "clip_id"),
                      ("scores", "clip_id")):
        t = r.embeddings("clip") if name.startswith("embeddings") else getattr(r, name)
        df = t.read()
        assert df[key].is_unique, f"duplicate keys in {name}"
        out[name] = df.drop(columns=[c for c in ("updated_at", "attempts") if c in df]).sort_values(key) \
            .reset_index(drop=True)
    for name in ("annotations.parquet", "selection.parquet"):
        df = pd.read_parquet(io.BytesIO(r.read_bytes(f"subsets/all/{name}")))
        out[name] = df.sort_values("clip_id").reset_index(drop=True)
    members = []
    for s in r.ls("subsets/all/shards", dirs=False):
        if s.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(r.read_bytes(f"subsets/all/shards/{s}"))) as tar:
                members += tar.getnames()
    out["shards"] = sorted(members)
    return out


def _same(a: dict, b: dict) -> None:
    assert a["shards"] == b["shards"]
    for name in a:
        if name == "shards":
            continue
        x, y = a[name], b[name]
        assert list(x.columns) == list(y.columns) and len(x) == len(y), name
        for col in x.columns:
            if x[col].dtype.kind == "f":
                np.testing.assert_allclose(x[col], y[col], atol=1e-5, err_msg=f"{name}.{col}")
            elif col in ("video_emb", "text_emb"):
                for u, v in zip(x[col], y[col]):
                    assert (u is None) == (v is None) and (u is None or np.allclose(u, v, atol=1e-5)), f"{name}.{col}"
            else:
                assert x[col].tolist() == y[col].tolist(), f"{name}.{col}"


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, source_list, tiny_clip):
    root = tmp_path_factory.mktemp("local") / "ds"
    _pipeline(str(root), source_list, tiny_clip)
    return _tables(str(root))


@pytest.fixture(scope="module")
def bucket_run(s3, source_list, tiny_clip):
    root = f"{s3}/pipeline"
    _pipeline(root, source_list, tiny_clip)
    return root, _tables(root)


def test_the_whole_pipeline_with_the_root_in_a_bucket_equals_a_local_run(bucket_run, local_run, tmp_path):
    root, tables = bucket_run
    _same(tables, local_run)
    assert len(tables["shards"]) and any(n.endswith(".mp4") for n in tables["shards"])
    fs = _fs()
    listing = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/pipeline")}
    assert {"sources", "clips", "scores", "embeddings", "media", "subsets"} <= listing
    assert fs.exists(f"{BUCKET}/pipeline/subsets/all/README.md")
    assert fs.exists(f"{BUCKET}/pipeline/embeddings/clip/_meta.json")
    assert not fs.exists(f"{BUCKET}/pipeline/.locks/score.lock")  # released
    # the published subset is plain WebDataset + Parquet: readable with the usual tools, straight from S3
    ann = pd.read_parquet(f"{root}/subsets/all/annotations.parquet")
    assert len(ann) == len(tables["annotations.parquet"])


def test_the_cli_reads_and_exports_a_root_in_a_bucket(bucket_run, source_list, tmp_path):
    root, tables = bucket_run
    st = json.loads(curate("status", "--root", root, "--json").stdout)
    assert st["split"]["ok"] == (tables["sources"].status == "ok").sum()
    out = tmp_path / "clips.parquet"
    curate("export", "--root", root, "clips", str(out))
    got = pd.read_parquet(out).drop(columns=["updated_at"]).sort_values("clip_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, tables["clips"])
    curate("export", "--root", root, "scores", f"{root}/exports/scores.parquet")  # to the bucket as well
    assert len(pd.read_parquet(f"{root}/exports/scores.parquet")) == len(tables["scores"])
    r = curate("ingest", str(source_list), "--root", root, "--json")  # everything done: skipped, nothing duplicated
    assert json.loads(r.stdout)["total"] == 0
    assert len(pd.read_parquet(f"{root}/subsets/all/annotations.parquet")) == len(tables["annotations.parquet"])


def test_lance_readers_open_the_tables_in_the_bucket(bucket_run):
    import duckdb
    import lance
    import polars as pl

    from curate.store.storage import lance_storage_options

    root, tables = bucket_run
    ds = lance.dataset(f"{root}/clips", storage_options=lance_storage_options(root))
    arrow = ds.to_table()
    assert arrow.num_rows == len(tables["clips"])
    assert pl.from_arrow(arrow).height == arrow.num_rows
    assert duckdb.sql("select count(*) from arrow").fetchall()[0][0] == arrow.num_rows


# ------------------------------------------------------------------------------------------ concurrency
WRITER = textwrap.dedent("""
    import sys, pyarrow as pa
    from curate.store import Root
    root, who, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    t = Root(root).clips
    for j in range(n):
        t.append(pa.table({"clip_id": [f"w{who}-{j:03d}-{k:02d}" for k in range(20)], "source_id": [f"s{who}"] * 20}))
    # every writer also inserts the same shared keys: each must land once
    t.insert_missing(pa.table({"clip_id": [f"shared-{k:02d}" for k in range(30)], "source_id": [f"s{who}"] * 30}))
    # and upserts a key of its own among everyone's
    t.upsert(pa.table({"clip_id": [f"w{who}-000-00"], "source_id": ["upserted"]}))
""")


def test_concurrent_writers_from_several_processes_lose_and_duplicate_nothing(s3):
    root = f"{s3}/concurrent"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, root, str(w), "10"], stderr=subprocess.PIPE, text=True)
             for w in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    from curate.store import Root

    df = Root(root).clips.read()
    want = {f"w{w}-{j:03d}-{k:02d}" for w in range(4) for j in range(10) for k in range(20)}
    want |= {f"shared-{k:02d}" for k in range(30)}
    assert df.clip_id.is_unique and set(df.clip_id) == want
    assert set(df.set_index("clip_id").loc[[f"w{w}-000-00" for w in range(4)], "source_id"]) == {"upserted"}
    assert not _fs().ls(f"{BUCKET}/concurrent/.locks") if _fs().exists(f"{BUCKET}/concurrent/.locks") else True


def test_one_writer_steps_refuse_a_second_run_on_object_storage(s3):
    from curate.errors import StageBusy
    from curate.store import Root

    root = Root(f"{s3}/locks")
    with root.lock("publish-x"):
        with pytest.raises(StageBusy, match="publish-x"):
            with root.lock("publish-x"):
                pass
        r = subprocess.run([sys.executable, "-c", "import sys; from curate.store import Root\n"
                            "with Root(sys.argv[1]).lock('publish-x'): pass", str(root)],
                           capture_output=True, text=True)
        assert r.returncode != 0 and "Another `curate publish-x`" in r.stderr
    with root.lock("publish-x"):  # released: free again
        pass
    # a holder killed on this machine leaves its lease: the next run sees the process is gone
    p = subprocess.Popen([sys.executable, "-c", "import sys, time; from curate.store import Root\n"
                          "with Root(sys.argv[1]).lock('card'):\n    print('held', flush=True); time.sleep(600)",
                          str(root)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    p.send_signal(signal.SIGKILL)
    p.wait()
    with root.lock("card"):
        pass


# ------------------------------------------------------------------------------------------ crashes
CRASHES = {"ingest": "upsert:2", "split": "split-source:2", "score": "score-merge:1"}


@pytest.mark.parametrize("stage", list(CRASHES))
def test_sigkill_mid_stage_on_a_bucket_then_rerun_equals_an_uninterrupted_run(stage, s3, source_list, tiny_clip,
                                                                             bucket_run):
    root = f"{s3}/crash-{stage}"
    for s in STAGES[: STAGES.index(stage)]:
        _run_stage(root, source_list, tiny_clip, s)
    code = ("import sys, json; sys.path.insert(0, %r); from test_object_store import _run_stage; "
            "_run_stage(%r, %r, json.loads(%r), %r)") % (str(Path(__file__).parent), root, str(source_list),
                                                         json.dumps(tiny_clip), stage)
    p = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CURATE_CRASH_AT": CRASHES[stage]},
                       capture_output=True, text=True, cwd=Path(__file__).parent)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    _pipeline(root, source_list, tiny_clip, start=stage)
    _same(_tables(root), bucket_run[1])


# ------------------------------------------------------------------------------------------ bench, migration
def test_the_filter_benchmark_runs_against_the_bucket(s3):
    bench = Path(__file__).parent.parent / "bench" / "bench_filter.py"
    p = subprocess.run([sys.executable, str(bench), "--rows", "20000", "--root", f"{s3}/bench"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert set(res) == {"thresholds", "where", "top30"} and 0 < res["top30"]["kept"] < 20000


def test_a_root_of_the_previous_version_is_migrated_by_one_command(tmp_path):
    """Roots written before Lance hold each table as a directory of part-*.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.store import SCHEMAS, Root, conform

    root = tmp_path / "old"
    (root / "clips").mkdir(parents=True)
    (root / "scores").mkdir()
    clips = conform(pa.table({"clip_id": ["a", "b", "c"], "source_id": ["s"] * 3, "start_s": [0.0, 1.0, 2.0]}),
                    SCHEMAS["clips"])
    pq.write_table(clips.slice(0, 2), root / "clips" / "part-00000000000000000001-aaaaaaaa.parquet")
    pq.write_table(clips.slice(2), root / "clips" / "part-00000000000000000002-bbbbbbbb.parquet")
    pq.write_table(pa.table({"clip_id": ["a", "b"], "clip_sim": [0.1, 0.2]}),
                   root / "scores" / "part-00000000000000000001-cccccccc.parquet")
    assert sorted(Root(root).clips.read().clip_id) == ["a", "b", "c"]  # opened as it is
    r = curate("migrate", "--root", str(root))
    assert "clips: 3 rows" in r.stderr and "scores: 2 rows" in r.stderr
    assert not list(root.rglob("part-*.parquet")) and (root / "clips" / "_versions").is_dir()
    assert sorted(Root(root).clips.read().clip_id) == ["a", "b", "c"]
    assert Root(root).scores.read().set_index("clip_id").clip_sim.to_dict() == {"a": 0.1, "b": 0.2}
    assert "nothing to do" in curate("migrate", "--root", str(root)).stderr


def test_curate_compact_merges_fragments_and_keeps_every_row(tmp_path):
    import pyarrow as pa

    from curate.store import Root

    root = Root(tmp_path / "r")
    for i in range(5):
        root.clips.append(pa.table({"clip_id": [f"c{i}"], "source_id": ["s"]}))
    root.embeddings("clip").append(pa.table({"clip_id": ["c0"], "status": ["ok"]}))
    assert root.clips.fragments() == 5
    r = curate("compact", "--root", str(root), "--keep-versions-s", "0")
    assert "2 tables: clips, embeddings/clip" in r.stderr
    assert root.clips.fragments() == 1 and sorted(root.clips.read().clip_id) == [f"c{i}" for i in range(5)]
    assert len(root.clips.lance().versions()) == 1  # older versions removed
