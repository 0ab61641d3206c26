"""Hostile inputs, crashes mid-run (SIGKILL), concurrent runs and injection attempts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CAPTIONS, read_table
from hostile import make_corpus, serve

from curate.errors import CurateError
from curate.stages.embed import embed
from curate.stages.filter import filter_clips
from curate.stages.ingest import ingest
from curate.stages.publish import publish
from curate.stages.score import score
from curate.stages.split import split
from curate.store import Root

EXPECTED_KINDS = {"zero": "corrupt", "truncated": "corrupt", "random": "corrupt", "text": "corrupt", "png": "corrupt",
                  "audio": "corrupt", "missing": "not_found", "404": "unavailable", "closed": "network",
                  "stall": "timeout", "loop": "network", "busy": "rate_limited", "dash": "invalid_url",
                  "dotdot_url": "unavailable"}
OK = {"good", "oneframe", "short", "4k", "vfr", "rotated", "weird_name", "http_good"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_clip):
    d = tmp_path_factory.mktemp("hostile")
    files = make_corpus(d / "in")
    srv, base = serve(d / "in")
    urls = {**{k: str(p) for k, p in files.items()}, "missing": str(d / "in" / "missing.mp4"),
            "http_good": f"{base}/good.mp4", "404": f"{base}/nope.mp4", "stall": f"{base}/stall.mp4",
            "loop": f"{base}/loop.mp4", "busy": f"{base}/busy.mp4", "closed": "http://127.0.0.1:1/x.mp4",
            "dash": "-o /tmp/evil.mp4", "dotdot_url": f"{base}/../../etc/passwd"}
    long_caption = "a very long caption " * 5000
    lst = d / "list.csv"
    with open(lst, "wb") as f:
        f.write(b"url,caption,name\n")
        for name, url in urls.items():
            cap = {"good": long_caption.encode(), "weird_name": b"caf\xe9 \xff\xfe bytes"}.get(name, name.encode())
            f.write(b'"' + url.replace('"', '""').encode() + b'",' + b'"' + cap + b'",' + name.encode() + b"\n")
    before_inputs = sorted(p.name for p in (d / "in").iterdir())
    root = d / "ds"
    results = {"ingest": ingest(root, lst, socket_timeout=2, retries=0, workers=4)}
    results["split"] = split(root, min_clip_s=0.1)
    results["embed"] = embed(root, "clip", options=tiny_clip, device="cpu")
    results["score"] = score(root, scorers=["technical", "alignment", "motion"])
    results["filter"] = filter_clips(root, "all")
    results["publish"] = publish(root, "all", shard_size=4)
    srv.shutdown()
    return {"root": root, "urls": urls, "results": results, "inputs": d / "in", "before_inputs": before_inputs,
            "long_caption": long_caption}


def test_every_hostile_item_ends_ok_or_with_a_specific_error(hostile):
    src = read_table(hostile["root"] / "sources")
    names = {json.loads(m)["name"]: row for m, row in zip(src.meta, src.itertuples())}
    assert set(names) == set(hostile["urls"])
    for name in OK:
        assert names[name].status == "ok", (name, names[name].error)
    for name, kind in EXPECTED_KINDS.items():
        row = names[name]
        assert (row.status, row.error_kind) == ("error", kind), (name, row.error)
        assert row.error and len(row.error) < 600 and "Traceback" not in row.error
    assert "no video stream (streams: audio)" in names["audio"].error
    assert "redirect loop" in names["loop"].error and "429" in names["busy"].error
    r = hostile["results"]["ingest"]
    assert r.ok + r.error == r.total == len(hostile["urls"])


def test_later_stages_account_for_every_item_and_publish_decodable_clips(hostile):
    import decord

    res, root = hostile["results"], hostile["root"]
    for stage in ("split", "embed", "score", "publish"):
        r = res[stage]
        assert r.ok + r.error == r.total, stage
    clips = read_table(root / "clips")
    errs = clips[clips.status == "error"]
    assert set(errs.error.str.contains("no scene")) == {True}  # the one-frame video
    emb = read_table(root / "embeddings" / "clip")
    assert set(emb.clip_id) == set(clips[clips.status == "ok"].clip_id)
    assert res["publish"].ok == res["filter"].extra["kept"] > 0
    for shard in (root / "subsets" / "all" / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".mp4"):
                    p = root / "check.mp4"
                    p.write_bytes(tar.extractfile(m).read())
                    assert len(decord.VideoReader(str(p))) >= 1
                    p.unlink()


def test_long_and_non_utf8_captions_survive_to_the_published_json(hostile):
    ann = read_table(hostile["root"] / "subsets" / "all" / "annotations.parquet")
    caps = set(ann.caption)
    assert hostile["long_caption"].strip() in caps
    assert any(c.startswith("caf") for c in caps if c)


def test_nothing_is_written_outside_the_root_and_inputs_are_untouched(hostile):
    root = hostile["root"]
    assert sorted(p.name for p in hostile["inputs"].iterdir()) == hostile["before_inputs"]
    assert not Path("/tmp/evil.mp4").exists()
    src = read_table(root / "sources")
    media = {p.name for p in (root / "media").iterdir()}
    ok_ids = set(src[src.status == "ok"].source_id)
    assert {m.split(".")[0] for m in media} == ok_ids  # unusable downloads are removed; names are ids only


def test_names_and_paths_cannot_escape_the_root(tmp_path, tiny_clip):
    root = Root(tmp_path / "ds")
    for bad in ("../evil", "a/b", "..", "", "-rf", "x" * 200):
        with pytest.raises(CurateError):
            root.subset_dir(bad)
        with pytest.raises(CurateError):
            root.embeddings(bad)
    with pytest.raises(CurateError, match="outside the dataset root"):
        root.inside("media", "../../etc/passwd")


def test_yaml_configs_cannot_construct_objects(tmp_path):
    from curate.pipeline import load_config

    marker = tmp_path / "pwned"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"root: x\nsources: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(CurateError, match="invalid YAML"):
        load_config(cfg)
    assert not marker.exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_in_a_checkpoint_never_runs(tmp_path, tiny_clip):
    import torch

    from curate.encoders.clip import ClipEncoder
    from curate.scorers.aesthetic import load_predictor

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil(marker)}, ckpt)
    with pytest.raises(CurateError):
        ClipEncoder(device="cpu", model="curate-tiny-clip", weights=str(ckpt), model_config=tiny_clip["model_config"])
    with pytest.raises(Exception):  # noqa: B017 - torch's UnpicklingError or ours: any refusal will do
        load_predictor(str(ckpt))
    assert not marker.exists()


def test_a_second_run_of_an_exclusive_stage_fails_clearly(tmp_path, videos):
    root = Root(tmp_path / "ds")
    ingest(root, [str(videos["two_shots"])])
    split(root)
    with root.lock("embed-clip"):
        p = subprocess.run([sys.executable, "-m", "curate.cli", "embed", "--root", str(root.path), "-o", "weights=random"],
                           capture_output=True, text=True)
    assert p.returncode == 2 and "Another `curate embed-clip` is running" in p.stderr
    assert not (root.path / "embeddings" / "clip").exists()


def test_concurrent_ingest_and_split_runs_share_the_work_without_duplicates(tmp_path, videos):
    """Two processes at once on one root (as mapped Airflow batches or two shells do): each source once."""
    import csv

    lst = tmp_path / "l.csv"
    with open(lst, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url"])
        for i in range(8):  # 8 distinct sources (hard links of the test videos under different names)
            p = tmp_path / f"v{i}.mp4"
            os.link(list(videos.values())[i % 3], p)
            w.writerow([str(p)])
    root = tmp_path / "ds"
    cli = [sys.executable, "-m", "curate.cli"]
    for stage in (["ingest", str(lst), "--workers", "1"], ["split", "--min-clip-s", "0.5"]):
        procs = [subprocess.Popen([*cli, *stage, "--root", str(root), "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert sum(o["ok"] for o in outs) == 8, outs  # every source done exactly once between the two
    src = read_table(root / "sources")
    clips = read_table(root / "clips")
    assert len(src) == 8 and src.source_id.is_unique and set(src.status) == {"ok"}
    assert clips.clip_id.is_unique and clips.source_id.nunique() == 8
    seq = tmp_path / "seq"
    ingest(seq, lst)
    split(seq, min_clip_s=0.5)
    assert sorted(read_table(seq / "clips").clip_id) == sorted(clips.clip_id)


# ------------------------------------------------------------------------------------------ crash safety
STAGES = ["ingest", "split", "embed", "score", "filter", "publish"]


def _run_stage(root, source_list, tiny_clip, stage):
    """One stage with small flush/shard sizes, so a crash can land between two writes."""
    {"ingest": lambda: ingest(root, source_list, flush_every=1),
     "split": lambda: split(root, min_clip_s=0.5, max_clip_s=2.0),
     "embed": lambda: embed(root, "clip", options=tiny_clip, device="cpu", batch_size=2, flush_every=2),
     "score": lambda: score(root),
     "filter": lambda: filter_clips(root, "all", min_duration=0.5),
     "publish": lambda: publish(root, "all", shard_size=2)}[stage]()


def _pipeline(root, source_list, tiny_clip, start="ingest"):
    for stage in STAGES[STAGES.index(start):]:
        _run_stage(root, source_list, tiny_clip, stage)


def _tables(root: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for name, key in (("sources", "source_id"), ("clips", "clip_id"), ("embeddings/clip", "clip_id"),
                      ("scores", "clip_id"), ("subsets/all/annotations.parquet", "clip_id"),
                      ("subsets/all/selection.parquet", "clip_id")):
        df = read_table(root / name)
        assert df[key].is_unique, f"duplicate keys in {name}"
        out[name] = df.drop(columns=[c for c in ("updated_at", "attempts") if c in df]).sort_values(key).reset_index(drop=True)
    out["shards"] = sorted(m for s in sorted((root / "subsets" / "all" / "shards").glob("*.tar"))
                           for m in tarfile.open(s).getnames())
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
def uninterrupted(tmp_path_factory, source_list, tiny_clip):
    root = tmp_path_factory.mktemp("clean") / "ds"
    _pipeline(root, source_list, tiny_clip)
    return _tables(root)


CRASHES = {  # stage -> crash point: the moment a kill hurts most
    "ingest": "upsert:2",        # new rows written, old copies not yet removed
    "split": "split-source:2",   # after the second source's clips
    "embed": "embed-flush:1",    # after the first part of embeddings
    "score": "score-merge:1",    # merged scores part written, the old not yet removed
    "publish": "publish-shard:1",  # a shard renamed into place, its manifest not written
}


@pytest.mark.parametrize("stage", list(CRASHES))
def test_sigkill_mid_stage_then_rerun_equals_an_uninterrupted_run(stage, tmp_path, source_list, tiny_clip, uninterrupted):
    root = tmp_path / "ds"
    for s in STAGES[: STAGES.index(stage)]:
        _run_stage(root, source_list, tiny_clip, s)
    code = ("import sys, json; sys.path.insert(0, %r); from test_hardening import _run_stage; "
            "_run_stage(%r, %r, json.loads(%r), %r)") % (str(Path(__file__).parent), str(root), str(source_list),
                                                         json.dumps(tiny_clip), stage)
    p = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CURATE_CRASH_AT": CRASHES[stage]},
                       capture_output=True, text=True, cwd=Path(__file__).parent)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    _pipeline(root, source_list, tiny_clip, start=stage)
    _same(_tables(root), uninterrupted)
    assert not list(root.rglob(".tmp-*"))


def test_caption_fixture_has_a_clip_without_caption():
    assert None in CAPTIONS.values()  # the crash tests cover the no-caption error path too


def test_a_decoder_that_hangs_cannot_hang_the_stage(monkeypatch, tmp_path, source_list):
    """decord calls cannot be interrupted: the chunk is abandoned after CURATE_DECODE_TIMEOUT_S, the rest goes on."""
    import threading

    from conftest import FirstFrameSampler

    from curate.media.frames import clip_groups, decode_clips

    root = Root(tmp_path / "ds")
    ingest(root, source_list)
    split(root, min_clip_s=0.5, max_clip_s=2.0)
    groups = clip_groups(root)
    stuck_source = groups[0][0]["source_id"]
    release = threading.Event()

    import curate.media.frames as frames_mod

    real = frames_mod.decode_source

    def decode_source(root_, sampler, src, clips):
        if src["source_id"] == stuck_source:
            release.wait(60)  # "hangs" until the test ends
        return real(root_, sampler, src, clips)

    monkeypatch.setattr(frames_mod, "decode_source", decode_source)
    monkeypatch.setenv("CURATE_DECODE_TIMEOUT_S", "1")
    out = list(decode_clips(root, FirstFrameSampler(), groups, workers=1, frames_per_clip=1))
    release.set()
    assert len(out) == sum(len(c) for _, c in groups)  # every clip accounted for
    for clip, value, err in out:
        if clip["source_id"] == stuck_source:
            assert value is None and "timed out after 1 s" in err
        else:
            assert err is None and value == (1, 24, 32, 3)
