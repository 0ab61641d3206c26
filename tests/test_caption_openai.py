"""The built-in `openai` captioner against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/vlm_server.py).

The server validates every request's format, checks one JPEG per sampled frame, captions each clip by the
colour of its frames (so a caption proves the frames arrived), records how many requests were in flight,
and injects 429 with Retry-After, 500s, a 400, a reset connection and a slow response, per colour.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import colour_root, curate, read_table
from vlm_server import VLMServer

KEY_ENV, KEY = "CURATE_TEST_VLM_KEY", "sk-test-5f3a9c1e-do-not-log"
COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "cyan", "magenta", "navy",
           "olive", "teal", "maroon"]
FAULTS = {"red": ["429"], "green": ["500", "500"], "blue": ["500"] * 4, "yellow": ["reset"], "white": ["slow"],
          "black": ["400"]}
#: fast retries for tests: 3 retries, 50 ms backoff base, a 1 s request timeout (the slow answer takes 2.5 s)
FAST = {"retries": "3", "backoff": "0.05", "timeout": "1", "frames": "3"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One 1.2 s clip per colour, each with a source caption."""
    return colour_root(tmp_path_factory.mktemp("colours"), COLOURS)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def _colours(root: Path) -> dict[str, str]:
    src = read_table(root / "sources")[["source_id", "url"]]
    clips = read_table(root / "clips").merge(src, on="source_id")
    return {r.clip_id: Path(r.url).stem for r in clips.itertuples()}


def _opts(server: VLMServer, **kw: str) -> list[str]:
    opts = {"base_url": server.base_url, "model": server.model, "api_key_env": KEY_ENV, **FAST, **kw}
    return [x for k, v in opts.items() for x in ("-o", f"{k}={v}")]


def _by_colour(root: Path, name: str) -> dict[str, object]:
    cols = _colours(root)
    return {cols[r.clip_id]: r for r in read_table(root / "captions" / name).itertuples()}


def _no_key_anywhere(root: Path, *texts: str) -> None:
    for p in root.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".parquet", ".md", ".txt", ".jsonl", ".log"):
            assert KEY.encode() not in p.read_bytes(), p
    for t in texts:
        assert KEY not in t


# ----------------------------------------------------------------------------- listing, options
def test_openai_captioner_is_listed_and_refuses_a_key_as_an_option(root):
    comps = {c["name"]: c for c in json.loads(curate("plugins", "--json").stdout)}
    assert comps["openai"]["kind"] == "captioner"
    assert {"base_url", "model", "api_key_env", "concurrency", "retries", "input"} <= set(comps["openai"]["options"])
    p = curate("caption", "--root", root, "-c", "openai", "-o", "base_url=http://127.0.0.1:9/v1", "-o", "model=m",
               "-o", f"api_key={KEY}", "--name", "k", check=False)
    assert p.returncode == 2 and "api_key_env" in p.stdout + p.stderr
    p = curate("caption", "--root", root, "-c", "openai", "--name", "k", check=False)
    assert p.returncode == 2 and "base_url" in p.stdout + p.stderr
    p = curate("caption", "--root", root, "-c", "openai", "-o", "base_url=http://u:pw@127.0.0.1:9/v1", "-o",
               "model=m", "--name", "k", check=False)
    assert p.returncode == 2 and "credentials" in p.stdout + p.stderr
    assert not (root / "captions" / "k").exists()


# ----------------------------------------------------------------------------- a bad endpoint: one error at start
def test_bad_endpoint_key_model_or_blind_server_is_one_error_at_start(root, key, monkeypatch):
    with VLMServer(key=KEY, frames=3) as s:
        cases = [
            (_opts(s, model="no-such-model"), "does not serve model 'no-such-model'; it serves: tiny-vlm"),
            (_opts(s, api_key_env="CURATE_TEST_NO_SUCH_VAR"), "CURATE_TEST_NO_SUCH_VAR is not set"),
            ([*_opts(s), "-o", "base_url=http://127.0.0.1:9/v1"], "Cannot reach the captioning endpoint"),
        ]
        monkeypatch.setenv("CURATE_TEST_WRONG_KEY", "sk-wrong")
        cases.append((_opts(s, api_key_env="CURATE_TEST_WRONG_KEY"), "refused the key in $CURATE_TEST_WRONG_KEY: HTTP 401"))
        for opts, want in cases:
            p = curate("caption", "--root", root, "-c", "openai", *opts, "--name", "bad", check=False)
            out = " ".join((p.stdout + p.stderr).split())
            assert p.returncode == 2 and want in out, out
            assert "sk-wrong" not in out and KEY not in out
        assert s.clip_requests() == [] and not (root / "captions" / "bad").exists()
    with VLMServer(key=KEY, frames=3, ignore_images=True) as blind:
        p = curate("caption", "--root", root, "-c", "openai", *_opts(blind), "--name", "bad", check=False)
        out = " ".join((p.stdout + p.stderr).split())
        assert p.returncode == 2 and "ignores the frames" in out, out
        assert blind.clip_requests() == []


def test_a_server_that_drops_the_frames_mid_run_gives_no_ok_row(root, key):
    from curate.stages.caption import caption, load_captioner

    with VLMServer(key=KEY, frames=3) as s:
        opts = dict(o.split("=", 1) for o in _opts(s)[1::2])
        cap = load_captioner("openai", opts)  # the preflight passes: images count
        s.ignore_images = True  # ... then the server starts answering the prompt alone
        r = caption(root, "openai", options=opts, name="blind", captioner_obj=cap)
        assert (r.total, r.ok, r.error) == (len(COLOURS), 0, len(COLOURS))
        t = read_table(root / "captions" / "blind")
        assert t.error.str.contains("did not reach the model").all(), t.error.tolist()


# ----------------------------------------------------------------------------- the run: in flight, faults, rerun
def test_requests_in_flight_retries_server_reasons_and_rerun(root, key, caplog):
    caplog.set_level(logging.DEBUG)
    with VLMServer(key=KEY, frames=3, latency=0.3, faults=FAULTS, retry_after=1.0, slow_s=2.5) as s:
        p = curate("caption", "--root", root, "-c", "openai", *_opts(s, concurrency="4"), "--name", "vlm", "--json",
                   check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        r = json.loads(p.stdout)
        assert (r["total"], r["ok"], r["error"]) == (14, 12, 2), r
        assert r["model"] == "tiny-vlm" and r["weights"] == "test/tiny-vlm"
        assert s.format_errors == []
        # the bound is used and never exceeded
        assert s.max_in_flight == 4
        reqs = s.clip_requests()
        assert all(q.images == 3 for q in reqs)  # one JPEG per sampled frame
        by = {}
        for q in reqs:
            by.setdefault(q.colour, []).append(q)
        assert len(by["red"]) == 2 and by["red"][0].status == 429
        assert by["red"][1].start - by["red"][0].start >= 0.95  # Retry-After: 1 honoured
        assert [q.status for q in by["green"]] == [500, 500, 200]
        assert [q.status for q in by["blue"]] == [500] * 4  # 1 + retries=3, then the error row
        assert [q.status for q in by["black"]] == [400]  # the request's own fault: not retried
        assert [q.status for q in by["yellow"]] == [0, 200] and [q.status for q in by["white"]] == [0, 200]  # reset, timeout: retried
        assert all(len(by[c]) == 1 for c in COLOURS if c not in FAULTS)
        # every clip ends ok (its frames' colour) or with the server's reason
        rows = _by_colour(root, "vlm")
        assert len(rows) == 14
        for c in COLOURS:
            if c in ("blue", "black"):
                continue
            assert (rows[c].status, rows[c].caption, rows[c].tokens) == ("ok", f"a plain {c} screen", 4)
        assert rows["blue"].status == "error" and "HTTP 500: model exploded on blue" in rows["blue"].error
        assert rows["black"].status == "error" and "HTTP 400: prompt too long for black" in rows["black"].error
        meta = json.loads((root / "captions" / "vlm" / "_meta.json").read_text())
        assert meta["captioner"] == "openai" and meta["extra"]["base_url"] == s.base_url
        assert meta["options"]["api_key_env"] == KEY_ENV
        # the key: only ever in the Authorization header
        assert all(q.auth == f"Bearer {KEY}" for q in s.records) and all(KEY not in q.url for q in s.records)
        _no_key_anywhere(root, p.stdout, p.stderr)

        # a rerun sends nothing; --retry-errors sends exactly the two error rows' clips
        from curate.stages.caption import caption

        s.reset_counts()
        opts = dict(o.split("=", 1) for o in _opts(s, concurrency="4")[1::2])
        again = caption(root, "openai", options=opts, name="vlm")
        assert (again.total, again.skipped) == (0, 14) and s.records == []
        s.faults["black"] = []
        redo = caption(root, "openai", options=opts, name="vlm", retry_errors=True)
        assert (redo.total, redo.ok) == (2, 2)
        assert sorted(q.colour for q in s.clip_requests()) == ["black", "blue"]
        t = read_table(root / "captions" / "vlm")
        assert len(t) == 14 and t.clip_id.is_unique and (t.status == "ok").all()
        assert KEY not in caplog.text


def test_server_gone_mid_run_stops_clearly_and_rerun_finishes(root, key):
    from curate.captioners.openai import ServerGone
    from curate.stages.caption import caption

    with VLMServer(key=KEY, frames=3, latency=0.05, die_after=5) as s:
        opts = dict(o.split("=", 1) for o in _opts(s, concurrency="2")[1::2])
        with pytest.raises(ServerGone, match="stopped answering"):
            caption(root, "openai", options=opts, name="gone", batch_size=3)
        t = read_table(root / "captions" / "gone")
        answered = s.answered  # 5, or 6 when the other request in flight was answered as the server went
        assert answered in (5, 6) and len(t) == answered and (t.status == "ok").all()  # no error rows for the rest
        s.down, s.die_after = False, None
        s.reset_counts()
        r = caption(root, "openai", options=opts, name="gone")
        assert (r.total, r.ok, r.skipped) == (14 - answered, 14 - answered, answered)
        assert len(s.clip_requests()) == 14 - answered
        t = read_table(root / "captions" / "gone")
        assert len(t) == 14 and t.clip_id.is_unique and (t.status == "ok").all()


def test_video_input_is_one_video_part_of_the_frames(root, key):
    from curate.stages.caption import caption

    with VLMServer(key=KEY, frames=4) as s:
        opts = dict(o.split("=", 1) for o in _opts(s, input="video", frames="4")[1::2])
        r = caption(root, "openai", options=opts, name="vid")
        assert (r.total, r.ok) == (14, 14) and s.format_errors == []
        assert all(q.images == 4 for q in s.clip_requests())
        rows = _by_colour(root, "vid")
        assert all(rows[c].caption == f"a plain {c} screen" for c in COLOURS)


def test_an_airflow_connection_gives_endpoint_key_and_model(root, monkeypatch):
    """conn_id: the endpoint, the key (its password) and the model come from an Airflow connection (here an
    AIRFLOW_CONN_ variable, as a deployment's secrets backend would hold it); the key is still never written."""
    pytest.importorskip("airflow.sdk")
    from curate.stages.caption import caption

    with VLMServer(key=KEY, frames=2) as s:
        monkeypatch.setenv("AIRFLOW_CONN_CURATE_TEST_VLM", json.dumps(
            {"conn_type": "http", "host": s.base_url, "password": KEY, "extra": {"model": s.model}}))
        r = caption(root, "openai", options={"conn_id": "curate_test_vlm", "frames": "2"}, name="conn")
        assert (r.total, r.ok) == (14, 14) and r.extra["model"] == "tiny-vlm"
        assert {q.auth for q in s.records} == {f"Bearer {KEY}"}
        meta = json.loads((root / "captions" / "conn" / "_meta.json").read_text())
        assert meta["options"] == {"conn_id": "curate_test_vlm", "frames": "2"} and meta["extra"]["base_url"] == s.base_url
        _no_key_anywhere(root)
        monkeypatch.setenv("AIRFLOW_CONN_CURATE_TEST_VLM", json.dumps(
            {"conn_type": "http", "host": s.base_url, "password": "sk-wrong", "extra": {"model": s.model}}))
        from curate.errors import CurateError

        with pytest.raises(CurateError, match="refused the key of Airflow connection 'curate_test_vlm': HTTP 401"):
            caption(root, "openai", options={"conn_id": "curate_test_vlm", "frames": "2"}, name="conn2")


# ----------------------------------------------------------------------------- captions flow on
def test_openai_captions_flow_through_embed_score_filter_publish(root, tiny_clip, key):
    """As the hf ones: embedded with `embed --caption captions:flow`, scored, filtered, published, carded (its own
    captions, from a server without faults: the test does not depend on what an earlier one wrote)."""
    import tarfile

    with VLMServer(key=KEY, frames=3, latency=0.05) as s:
        r = json.loads(curate("caption", "--root", root, "-c", "openai", *_opts(s), "--name", "flow", "--json").stdout)
    assert (r["total"], r["ok"]) == (14, 14)

    enc = ["-e", "clip", "-o", f"model_config={tiny_clip['model_config']}", "-o", f"weights={tiny_clip['weights']}",
           "-o", "frames=2", "--device", "cpu"]
    curate("embed", "--root", root, *enc)
    r = json.loads(curate("embed", "--root", root, *enc, "--caption", "captions:flow", "--json").stdout)
    assert (r["name"], r["total"], r["ok"], r["video_reused"]) == ("clip_flow", 14, 14, 14)
    curate("score", "--root", root)
    sc = read_table(root / "scores")
    assert sc.clip_flow_sim.notna().all()
    f = json.loads(curate("filter", "--root", root, "--subset", "gen", "--caption", "captions:flow", "--min-sim", "-1",
                          "--json").stdout)
    assert (f["total"], f["kept"]) == (14, 14)
    pub = json.loads(curate("publish", "--root", root, "--subset", "gen", "--json").stdout)
    assert pub["published"] == 14 and pub["caption"] == "captions:flow"
    sub = root / "subsets" / "gen"
    cols = _colours(root)
    seen = 0
    for shard in sorted((sub / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    rec = json.loads(tar.extractfile(m).read())
                    assert rec["caption"] == f"a plain {cols[rec['clip_id']]} screen"
                    assert rec["source_caption"].startswith("uploaded video")
                    seen += 1
    assert seen == 14
    card = (sub / "README.md").read_text()
    assert "### captions/flow (the `caption` field)" in card and "- captioner: `openai`" in card
    _no_key_anywhere(root)
