"""The `curate` command as a user runs it (subprocesses), exit codes, --help and `curate run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import curate, read_table

COMMANDS = ["ingest", "split", "embed", "score", "filter", "publish", "run", "plugins", "status"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    p = curate(command, "--help")
    assert "Usage" in p.stdout and len(p.stdout) > 200


def test_full_pipeline_through_the_cli(tmp_path, source_list, tiny_clip):
    root = tmp_path / "ds"
    p = curate("ingest", source_list, "--root", root, "--json")
    assert json.loads(p.stdout)["ok"] == 3
    curate("split", "--root", root, "--min-clip-s", "0.5", "--max-clip-s", "3")
    opts = [x for k, v in tiny_clip.items() for x in ("-o", f"{k}={v}")]
    p = curate("embed", "--root", root, "--encoder", "clip", *opts, "--device", "cpu", "--batch-size", "4")
    assert "embed total=" in p.stderr
    curate("score", "--root", root)
    p = curate("filter", "--root", root, "--subset", "s", "--min-sim", "-1", "--max-duration", "2.5", "--json")
    summary = json.loads(p.stdout)
    scores = read_table(root / "scores")
    assert summary["kept"] == int(((scores.clip_sim >= -1) & (scores.duration_s <= 2.5)).sum()) > 0
    p = curate("publish", "--root", root, "--subset", "s", "--shard-size", "2", "--json")
    assert json.loads(p.stdout)["published"] == summary["kept"]
    status = json.loads(curate("status", "--root", root, "--json").stdout)
    assert status["ingest"] == {"ok": 3, "error": 0, "pending": 0}
    assert status["embed:clip"]["pending"] == 0 and status["publish:s"]["ok"] == summary["kept"]
    table = curate("status", "--root", root).stdout
    assert "embed:clip" in table and "publish:s" in table


def test_stage_exit_codes(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("url,caption\n-rf,x\n/does/not/exist.mp4,y\n")
    p = curate("ingest", bad, "--root", tmp_path / "ds", check=False)
    assert p.returncode == 1 and "invalid_url" in p.stderr  # nothing at all succeeded
    nourl = tmp_path / "nourl.csv"
    nourl.write_text("link\nx\n")
    p = curate("ingest", nourl, "--root", tmp_path / "ds2", check=False)
    assert p.returncode == 2 and "no 'url' column" in p.stderr and "Traceback" not in p.stderr
    p = curate("embed", "--root", tmp_path / "ds", "--encoder", "nope", check=False)
    assert p.returncode == 2 and "No encoder named 'nope'" in p.stderr


def test_some_errors_still_exit_zero(tmp_path, videos):
    lst = tmp_path / "l.csv"
    lst.write_text(f"url\n{videos['two_shots']}\n/missing.mp4\n")
    p = curate("ingest", lst, "--root", tmp_path / "ds")
    assert "ok=1 error=1" in p.stderr and "not_found" in p.stderr


def test_run_config_runs_every_stage(tmp_path, source_list, tiny_clip):
    cfg = {
        "root": "out",
        "sources": str(source_list),
        "split": {"detector": "content", "min_clip_s": 0.5, "max_clip_s": 3.0},
        "embed": [{"encoder": "clip", "options": tiny_clip, "device": "cpu"}],
        "score": {},
        "filter": {"subset": "cfg", "min_duration": 1.0},
        "publish": {"shard_size": 100},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = curate("run", path)
    root = tmp_path / "out"
    assert (root / "subsets" / "cfg" / "shards" / "shard-00000.tar").exists()
    assert "publish:cfg" in p.stdout
    cfg["filtr"] = {}
    path.write_text(yaml.safe_dump(cfg))
    p = curate("run", path, check=False)
    assert p.returncode == 2 and "unknown keys" in p.stderr


def test_shipped_configs_are_valid():
    from curate.pipeline import load_config

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for c in configs:
        load_config(c)


def test_run_splits_and_embeds_in_one_decode_unless_told_not_to(tmp_path, source_list, tiny_clip):
    from curate.pipeline import run_config
    from curate.store import Root

    base = {"sources": str(source_list), "split": {"detector": "content", "min_clip_s": 0.5, "max_clip_s": 3.0},
            "embed": [{"encoder": "clip", "options": tiny_clip, "device": "cpu"}]}
    one = run_config({**base, "root": str(tmp_path / "one")})
    two = run_config({**base, "root": str(tmp_path / "two"), "one_pass": False})
    assert [r.stage for r in one] == ["ingest", "process"]
    assert [r.stage for r in two] == ["ingest", "split", "embed"]

    def ok_clips(name):
        c = Root(tmp_path / name).clips.read(columns=["clip_id", "status"])
        return sorted(c[c.status == "ok"].clip_id)

    assert ok_clips("one") == ok_clips("two") and ok_clips("one")
    e = Root(tmp_path / "one").embeddings("clip").read(columns=["clip_id", "status"])
    assert sorted(e[e.status == "ok"].clip_id) == ok_clips("one")
    assert Root(tmp_path / "one").embedding_meta("clip")["options"]["decoder"] == "ffmpeg"
    assert "decoder" not in Root(tmp_path / "two").embedding_meta("clip")["options"]
