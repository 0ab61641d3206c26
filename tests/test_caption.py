"""Clip captioning: captioner plugins, the `caption` stage, generated captions embedded, scored, filtered,
searched, evaluated and published.

Two captioners: a fake third-party plugin (installed as a distribution with a `curate` entry point, so the
CLI subprocesses load it as they would a pip-installed package) that names each clip's colour and
misbehaves on purpose for some colours, so the degenerate-output rules and the happy path are checked
deterministically; and the built-in `hf` captioner on a tiny random Qwen2.5-VL saved in the real format.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import colour_root as make_colour_root
from conftest import curate, curate_parallel, read_table
from tiny_vlm import build_tiny_qwen2_5_vl

FAKE_PLUGIN = '''
"""A third-party captioner: names the colour of a clip; fails, echoes or repeats itself for some colours."""
import os

import numpy as np

from curate import hookimpl
from curate.captioners import Caption, Captioner, CaptionerInfo

COLOURS = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "white": (255, 255, 255), "black": (0, 0, 0)}


class ColourCaptioner(Captioner):
    name = "colour"

    def __init__(self, device="auto", frames="2", prompt="Name the colour of the clip.", max_new_tokens="16"):
        super().__init__(device)
        self.frames, self.prompt, self.max_new_tokens = int(frames), prompt, int(max_new_tokens)

    @property
    def info(self):
        return CaptionerInfo("colour", "ColourCaptioner", "none", self.prompt, self.frames,
                             {"max_new_tokens": self.max_new_tokens})

    def decode_size(self, width, height):
        return (32, 24)

    def preprocess(self, frames):
        mean = frames.reshape(-1, 3).mean(0)
        return min(COLOURS, key=lambda c: float(np.abs(np.array(COLOURS[c]) - mean).sum()))

    def caption_batch(self, inputs):
        log = os.environ.get("FAKECAP_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{len(inputs)}\\n")
        out = []
        for colour in inputs:
            if colour == "blue":
                raise RuntimeError("this captioner cannot see blue")
            if colour == "green":
                out.append(Caption("green " * 40, self.max_new_tokens, True))
            elif colour == "white":
                out.append(Caption("", 0, False))
            elif colour == "black":
                out.append(self.prompt)
            else:
                out.append(Caption(f"a plain {colour} screen", 4, False))
        return out


@hookimpl
def register_captioners(register):
    register("colour", ColourCaptioner, description="names the colour of a clip (test plugin)",
             options={"frames": "frames per clip", "prompt": "the prompt", "max_new_tokens": "limit"})
'''

COLOURS = ["red", "green", "blue", "yellow", "white", "black"]


@pytest.fixture(scope="module")
def fake_plugin(tmp_path_factory):
    """The fake captioner as an installed distribution (module + dist-info with a `curate` entry point) on
    PYTHONPATH, so every `curate` subprocess finds it through importlib.metadata like a pip-installed one."""
    d = tmp_path_factory.mktemp("site")
    (d / "curate_fakecap.py").write_text(FAKE_PLUGIN)
    info = d / "curate_fakecap-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: curate-fakecap\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[curate]\nfakecap = curate_fakecap\n")
    (info / "RECORD").write_text("")
    log = d / "calls.log"
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "FAKECAP_LOG")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(d), old["PYTHONPATH"]) if p)
    os.environ["FAKECAP_LOG"] = str(log)
    # in this process too (for the stage called as a function): through the plugin manager
    sys.path.insert(0, str(d))
    from curate.plugins import load_plugins

    pm = load_plugins()
    if not pm.has_plugin("fakecap"):
        pm.register(importlib.import_module("curate_fakecap"), name="fakecap")
    yield log
    sys.path.remove(str(d))
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def colour_root(tmp_path_factory, fake_plugin):
    """A root with one 1.2 s clip per colour, each with a source caption."""
    return make_colour_root(tmp_path_factory.mktemp("colours"), COLOURS)


def _clip_colours(root: Path) -> dict[str, str]:
    src = read_table(root / "sources")[["source_id", "url"]]
    clips = read_table(root / "clips").merge(src, on="source_id")
    return {r.clip_id: Path(r.url).stem for r in clips.itertuples()}


def _captions(root: Path, name: str) -> pd.DataFrame:
    return read_table(root / "captions" / name)


# ----------------------------------------------------------------------------- rules (no model)
def test_degenerate_outputs_are_named():
    from curate.stages.caption import degenerate_reason, repeated_tail

    prompt = "Describe this video clip."
    assert degenerate_reason("A man walks his dog in a park.", prompt=prompt, tokens=9, max_new_tokens=64) is None
    assert degenerate_reason("", prompt=prompt) == "empty caption"
    assert degenerate_reason(" ... ", prompt=prompt).startswith("empty caption")
    assert degenerate_reason("describe this video clip", prompt=prompt) == "the model echoed the prompt"
    assert degenerate_reason("Describe this video clip. A dog.", prompt=prompt) == "the model echoed the prompt"
    looping = "A dog runs. " + "and then the dog " * 12 + "and th"
    assert "repeated to the token limit" in degenerate_reason(looping, prompt=prompt, tokens=64, max_new_tokens=64)
    # the same text ended by the model itself (end-of-sequence before the limit) is odd, not truncated
    assert degenerate_reason(looping, prompt=prompt, tokens=40, max_new_tokens=64) is None
    assert degenerate_reason("la la la la la la la la la la", prompt=prompt) is not None  # limit unknown
    assert degenerate_reason("a red ball, a red ball, and a blue one", prompt=prompt, truncated=True) is None
    phrase, span = repeated_tail("intro text " + "xyz " * 10)
    assert phrase.strip() in ("xyz", "yz x", "z xy") and span >= 30


def test_caption_sources_are_parsed_and_checked():
    from curate.errors import CurateError
    from curate.store.names import parse_caption_source

    assert parse_caption_source(None) is None and parse_caption_source("source") is None
    assert parse_caption_source("captions:qwen-7b") == "qwen-7b"
    for bad in ("qwen", "captions:", "captions:../etc"):
        with pytest.raises(CurateError):
            parse_caption_source(bad)


# ----------------------------------------------------------------------------- the stage, fake captioner
def test_third_party_captioner_is_listed_without_loading_it(colour_root):
    comps = {c["name"]: c for c in json.loads(curate("plugins", "--json").stdout)}
    assert comps["colour"]["kind"] == "captioner" and comps["colour"]["package"] == "curate-fakecap 0.1.0"
    assert comps["hf"]["kind"] == "captioner" and "weights" in comps["hf"]["options"]
    assert "captioner" in curate("plugins").stdout


def test_caption_stage_writes_rows_errors_and_is_idempotent(colour_root, fake_plugin):
    fake_plugin.write_text("")
    r = json.loads(curate("caption", "--root", colour_root, "--captioner", "colour", "--batch-size", "4",
                          "--json").stdout)
    assert (r["total"], r["ok"], r["error"]) == (6, 2, 4) and r["name"] == "colour"
    assert r["captions_per_s"] > 0 and r["tokens"] == 24  # 4 + 4 + 16 (the degenerate green one)
    calls = [int(x) for x in fake_plugin.read_text().split()]
    assert calls[0] == 4  # batched across clips (sources); the batch with blue is retried clip by clip
    t = _captions(colour_root, "colour")
    colours = _clip_colours(colour_root)
    by = {colours[r.clip_id]: r for r in t.itertuples()}
    assert len(t) == 6 and t.clip_id.is_unique
    assert (by["red"].status, by["red"].caption, by["red"].tokens) == ("ok", "a plain red screen", 4)
    assert by["yellow"].status == "ok" and pd.isna(by["red"].error)
    assert by["blue"].status == "error" and "cannot see blue" in by["blue"].error
    assert by["green"].error.startswith("degenerate: 'green' repeated to the token limit")
    assert by["white"].error == "empty caption" and by["black"].error == "the model echoed the prompt"
    assert set(t.model) == {"ColourCaptioner"} and set(t.prompt) == {"Name the colour of the clip."}
    assert json.loads(t.generation[0]) == {"max_new_tokens": 16} and (t.seconds >= 0).all()
    meta = json.loads((colour_root / "captions" / "colour" / "_meta.json").read_text())
    assert meta["captioner"] == "colour" and meta["prompt"] == "Name the colour of the clip."

    fake_plugin.write_text("")
    again = json.loads(curate("caption", "--root", colour_root, "-c", "colour", "--json").stdout)
    assert (again["total"], again["skipped"]) == (0, 6) and fake_plugin.read_text() == ""
    p = curate("caption", "--root", colour_root, "-c", "colour", "--retry-errors", "--json", check=False)
    retry = json.loads(p.stdout)
    assert (retry["total"], retry["skipped"], retry["error"]) == (4, 2, 4)
    assert p.returncode == 1  # there was work and none of it succeeded
    t2 = _captions(colour_root, "colour")
    assert len(t2) == 6 and t2.clip_id.is_unique

    p = curate("caption", "--root", colour_root, "-c", "colour", "-o", "prompt=What colour?", check=False)
    assert p.returncode == 2 and "--name" in p.stderr
    p = curate("caption", "--root", colour_root, "-c", "nope", check=False)
    assert p.returncode == 2 and "colour" in p.stderr and "hf" in p.stderr
    st = json.loads(curate("status", "--root", colour_root, "--json").stdout)
    assert st["caption:colour"] == {"ok": 2, "error": 4, "pending": 0}


def test_caption_only_the_given_clip_ids(colour_root):
    from curate.stages.caption import caption

    colours = _clip_colours(colour_root)
    red = [c for c, col in colours.items() if col == "red"]
    r = caption(colour_root, "colour", name="only-red", clip_ids=red)
    assert (r.total, r.ok) == (1, 1)
    assert _captions(colour_root, "only-red").clip_id.tolist() == red


def test_curate_run_yaml_has_a_caption_section(colour_root, tmp_path):
    import yaml

    from curate.errors import CurateError
    from curate.pipeline import load_config, run_config

    lst = colour_root.parent / "list.csv"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"root": "ds", "sources": str(lst), "split": {"detector": "none", "min_clip_s": 0.5},
                                   "caption": {"captioner": "colour", "name": "yaml", "batch_size": 3,
                                               "options": {"prompt": "Which colour?"}}}))
    results = run_config(load_config(cfg))
    cap = results[-1]
    assert (cap.stage, cap.total, cap.ok) == ("caption", 6, 2)
    assert set(_captions(tmp_path / "ds", "yaml").prompt) == {"Which colour?"}
    cfg.write_text(yaml.safe_dump({"root": "ds", "caption": {"captioner": "colour", "frames": 4}}))
    with pytest.raises(CurateError, match="unknown keys in caption"):
        load_config(cfg)


# ----------------------------------------------------------------------------- generated captions flow on
def _shard_records(subset_dir: Path) -> dict[str, dict]:
    out = {}
    for shard in sorted((subset_dir / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    rec = json.loads(tar.extractfile(m).read())
                    out[rec["clip_id"]] = rec
    return out


def test_generated_captions_are_embedded_scored_filtered_searched_and_published(colour_root, tiny_clip):
    import numpy as np

    root = colour_root
    colours = _clip_colours(root)
    enc = ["-e", "clip", "-o", f"model_config={tiny_clip['model_config']}", "-o", f"weights={tiny_clip['weights']}",
           "-o", "frames=2", "--device", "cpu"]
    from curate.errors import CurateError
    from curate.query.retrieval import evaluate
    from curate.query.search import search
    from curate.stages.embed import embed
    from curate.stages.publish import publish
    from curate.stages.score import score

    opts = {"model_config": tiny_clip["model_config"], "weights": tiny_clip["weights"], "frames": "2"}
    embed(root, "clip", options=opts, device="cpu")
    r = json.loads(curate("embed", "--root", root, *enc, "--caption", "captions:colour", "--json").stdout)
    assert (r["name"], r["caption"], r["total"], r["ok"]) == ("clip_colour", "captions:colour", 2, 2)
    assert (r["video_from"], r["video_reused"], r["without_caption"]) == ("clip", 2, 4)  # nothing decoded again
    again = embed(root, "clip", options=opts, device="cpu", caption="captions:colour")
    assert again.total == 0 and again.extra["without_caption"] == 4
    meta = json.loads((root / "embeddings" / "clip_colour" / "_meta.json").read_text())
    assert meta["caption"] == "captions:colour" and meta["options"] == json.loads(
        (root / "embeddings" / "clip" / "_meta.json").read_text())["options"]
    gen = read_table(root / "embeddings" / "clip_colour").set_index("clip_id")
    src = read_table(root / "embeddings" / "clip").set_index("clip_id")
    assert {colours[c] for c in gen.index} == {"red", "yellow"}
    for cid in gen.index:
        assert np.array_equal(gen.video_emb[cid], src.video_emb[cid])
        assert not np.allclose(gen.text_emb[cid], src.text_emb[cid])  # the generated caption, not the source's

    score(root)
    sc = read_table(root / "scores").set_index("clip_id")
    for cid, col in colours.items():
        if col in ("red", "yellow"):
            want = float(np.dot(gen.video_emb[cid], gen.text_emb[cid]))
            assert sc.clip_colour_sim[cid] == pytest.approx(want, abs=1e-5)
        else:
            assert np.isnan(sc.clip_colour_sim[cid]) and "no caption in captions/colour" in sc.clip_colour_sim_error[cid]
    blue = next(c for c, col in colours.items() if col == "blue")
    assert "cannot see blue" in sc.clip_colour_sim_error[blue]
    assert sc.clip_sim.notna().all()  # the source captions are scored beside them
    with pytest.raises(CurateError, match="curate embed"):
        score(root, caption="captions:other")
    curate("score", "--root", root, "--caption", "captions:colour", "-s", "alignment")

    f = json.loads(curate("filter", "--root", root, "--subset", "gen", "--caption", "captions:colour",
                          "--min-sim", "-1", "--json").stdout)
    assert (f["total"], f["kept"]) == (6, 2) and f["options"]["caption"] == "captions:colour"
    assert [(x["name"], x["column"]) for x in f["rules"]] == [("caption", "clip_colour_sim"), ("min_sim", "clip_colour_sim")]
    assert f["dropped_by_rule"]["caption"] == 4

    pub = json.loads(curate("publish", "--root", root, "--subset", "gen", "--json").stdout)
    assert pub["published"] == 2 and pub["caption"] == "captions:colour"
    sub = root / "subsets" / "gen"
    recs = _shard_records(sub)
    red = next(c for c, col in colours.items() if col == "red")
    assert recs[red]["caption"] == "a plain red screen"
    assert recs[red]["source_caption"].startswith("uploaded video number")
    assert recs[red]["captions"]["colour"] == "a plain red screen" and recs[red]["captions"]["only-red"]
    ann = read_table(sub / "annotations.parquet").set_index("clip_id")
    assert ann.caption_colour[red] == "a plain red screen" and ann.source_caption[red] == recs[red]["source_caption"]
    card = (sub / "README.md").read_text()
    assert "## Captions" in card and "### captions/colour (the `caption` field)" in card
    assert "- captioner: `colour`" in card and '- prompt: "Name the colour of the clip."' in card
    assert "- generation: max_new_tokens=16" in card and "captions embedded: captions:colour" in card
    before = {p.name: p.stat().st_mtime_ns for p in (sub / "shards").glob("*.tar")}
    assert publish(root, "gen").skipped == 2
    publish(root, "gen", caption="source")
    recs = _shard_records(sub)
    assert recs[red]["caption"] == recs[red]["source_caption"] and recs[red]["captions"]["colour"]
    assert {p.name: p.stat().st_mtime_ns for p in (sub / "shards").glob("*.tar")} != before  # rebuilt

    hits = json.loads(curate("search", "a red screen", "--root", root, "-e", "clip_colour", "--device", "cpu",
                             "--json").stdout)
    assert hits["caption_source"] == "captions:colour" and len(hits["results"]) == 2
    assert {h["caption"] for h in hits["results"]} == {"a plain red screen", "a plain yellow screen"}
    assert all(h["source_caption"].startswith("uploaded video") for h in hits["results"])
    shown = search(root, "a red screen", "clip", caption="captions:colour", device="cpu", k=6)
    assert sum(h["caption"] is not None for h in shown["results"]) == 2

    ev = json.loads(curate("eval-retrieval", "--root", root, "-e", "clip", "-e", "clip_colour", "--json").stdout)
    assert ev["clips"] == 2  # clips with a source caption and a generated one, embedded in both sets
    assert [(x["encoder"], x["caption"], x["captions"]) for x in ev["results"]] == [
        ("clip", "source", 2), ("clip_colour", "captions:colour", 2)]
    only = evaluate(root, caption="captions:colour")
    assert [x["encoder"] for x in only["results"]] == ["clip_colour"]


# ----------------------------------------------------------------------------- the built-in hf captioner
@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("models") / "tiny-qwen2.5-vl")


HF_OPTS = ("-o", "frames=2", "-o", "max_new_tokens=6", "-o", "size=64")


def test_hf_captioner_captions_clips_with_a_real_architecture(colour_root, tiny_vlm):
    """A random model writes garbage, but every clip gets a row: its caption and generated tokens, or the
    reason it was refused; the configuration is recorded."""
    r = json.loads(curate("caption", "--root", colour_root, "-c", "hf", "-o", f"weights={tiny_vlm}", *HF_OPTS,
                          "--name", "tiny", "--device", "cpu", "--batch-size", "4", "--json").stdout)
    assert r["total"] == 6 and r["ok"] + r["error"] == 6, r
    assert r["model"] == "Qwen2_5_VLForConditionalGeneration" and r["weights"] == str(tiny_vlm)
    assert r["captions_per_s"] > 0 and r["tokens_per_s"] >= 0
    t = _captions(colour_root, "tiny")
    assert len(t) == 6 and t.clip_id.is_unique
    assert t.tokens.between(0, 6).all() and t.error[t.status == "error"].str.len().gt(0).all()
    assert t.caption[t.status == "ok"].str.strip().str.len().gt(0).all()
    assert json.loads(t.generation[0]) == {"max_new_tokens": 6, "do_sample": False, "num_beams": 1,
                                           "repetition_penalty": 1.0}
    meta = json.loads((colour_root / "captions" / "tiny" / "_meta.json").read_text())
    assert meta["extra"]["input"] == "images" and meta["batch_size"] == 4 and meta["weights"] == str(tiny_vlm)


def test_hf_captioner_video_input_batches_and_determinism(colour_root, tiny_vlm):
    """The model's native video input works too; greedy captions do not depend on the batch size (left
    padding) and rerun identically."""
    from curate.captions import caption_texts
    from curate.stages.caption import caption

    opts = {"weights": str(tiny_vlm), "frames": "2", "max_new_tokens": "6", "size": "64"}
    for name, bs, extra in (("vid-1", 1, {"input": "video"}), ("vid-6", 6, {"input": "video"}), ("img-6", 6, {}),
                            ("img-4", 4, {})):
        r = caption(colour_root, "hf", options={**opts, **extra}, name=name, device="cpu", batch_size=bs)
        assert r.total == 6 and r.ok + r.error == 6
    a, b = _captions(colour_root, "vid-1"), _captions(colour_root, "vid-6")
    merged = a.merge(b, on="clip_id")
    assert (merged.caption_x.fillna("") == merged.caption_y.fillna("")).all()
    same = _captions(colour_root, "img-6").merge(_captions(colour_root, "img-4"), on="clip_id")
    assert len(same) == 6 and (same.caption_x.fillna("") == same.caption_y.fillna("")).all()  # image input too
    assert caption_texts(colour_root, "vid-1") == dict(zip(a.clip_id[a.status == "ok"], a.caption[a.status == "ok"]))
    # given room, this random model loops on one symbol: the real-model case of the repetition rule
    r = caption(colour_root, "hf", options={**opts, "max_new_tokens": "32"}, name="loop", device="cpu", batch_size=6)
    loop = _captions(colour_root, "loop")
    assert r.error == 6 and loop.error.str.contains("repeated to the token limit").all() and (loop.tokens == 32).all()


def test_hf_captioner_offline_and_vllm_errors_say_what_to_do(colour_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = curate("caption", "--root", colour_root, "-c", "hf", "-o", "weights=nobody/no-such-vlm", "--name", "off",
               check=False)
    assert p.returncode == 2
    assert "not on this machine" in p.stderr and "hf download nobody/no-such-vlm" in p.stderr, p.stderr
    p = curate("caption", "--root", colour_root, "-c", "hf", "-o", f"weights={tmp_path / 'missing'}", "--name", "miss",
               check=False)
    assert p.returncode == 2 and "no such directory" in p.stderr
    p = curate("caption", "--root", colour_root, "-c", "hf", "-o", "backend=vllm", "--name", "vl", check=False)
    assert p.returncode == 2 and "-c openai" in p.stdout + p.stderr  # the in-process vLLM backend was removed


# ----------------------------------------------------------------------------- per batch (resident workers)
def _sources_by_colour(root: Path) -> dict[str, str]:
    src = read_table(root / "sources")[["source_id", "url"]]
    return {Path(r.url).stem: r.source_id for r in src.itertuples()}


ROW = ["clip_id", "status", "caption", "error", "tokens", "captioner", "model", "weights", "prompt", "generation"]


def _rows(root: Path, name: str) -> pd.DataFrame:
    t = _captions(root, name)
    assert t.clip_id.is_unique, f"captions/{name} has duplicate clips"
    return t[ROW].sort_values("clip_id").reset_index(drop=True)


def test_caption_batches_in_two_processes_equal_one_run(colour_root, tiny_vlm, tmp_path):
    """Two processes caption two batches of one root at once (--source-ids): the rows of one whole-root run,
    greedy captions identical, one row per clip; a rerun (--shard 0/1: every source) adds nothing, and
    per-batch work takes no root lock."""
    from curate.stages.caption import caption
    from curate.store import Root

    by_colour = _sources_by_colour(colour_root)
    files = []
    for i, part in enumerate((COLOURS[:3], COLOURS[3:])):
        f = tmp_path / f"batch{i}.txt"
        f.write_text("\n".join(by_colour[c] for c in part))
        files.append(f)
    hf = ["-c", "hf", "-o", f"weights={tiny_vlm}", *HF_OPTS, "--device", "cpu"]
    runs = curate_parallel([["caption", "--root", colour_root, *hf, "--name", "batched", "--batch-size", "2",
                       "--source-ids", f] for f in files])
    assert [(r["total"], r["skipped"], r["ok"] + r["error"]) for r in runs] == [(3, 0, 3), (3, 0, 3)]
    opts = {"weights": str(tiny_vlm), "frames": "2", "max_new_tokens": "6", "size": "64"}
    whole = caption(colour_root, "hf", options=opts, name="whole", device="cpu", batch_size=4)
    assert whole.total == 6
    batched, one = _rows(colour_root, "batched"), _rows(colour_root, "whole")
    assert len(batched) == 6
    pd.testing.assert_frame_equal(batched, one)
    meta = json.loads((colour_root / "captions" / "batched" / "_meta.json").read_text())
    assert meta["captioner"] == "hf" and meta["options"] == opts and meta["batch_size"] == 2

    again = json.loads(curate("caption", "--root", colour_root, *hf, "--name", "batched", "--shard", "0/1",
                              "--json").stdout)
    assert (again["total"], again["skipped"]) == (0, 6)
    with Root(colour_root).lock("caption-batched"):  # a whole-root run holds it; batches never wait for it
        r = caption(colour_root, "hf", options=opts, name="batched", device="cpu",
                    source_ids=[by_colour[c] for c in COLOURS])
    assert (r.total, r.skipped) == (0, 6)
    pd.testing.assert_frame_equal(_rows(colour_root, "batched"), batched)


def test_a_preloaded_captioner_serves_many_batches_with_one_load(colour_root, tiny_vlm, monkeypatch):
    """What a resident worker does: load the VLM once, caption batch after batch with it."""
    from transformers import AutoModelForImageTextToText

    from curate.stages.caption import caption, load_captioner

    loads = []
    real = AutoModelForImageTextToText.from_pretrained

    def counting(*a, **k):
        loads.append(a)
        return real(*a, **k)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", counting)
    by_colour = _sources_by_colour(colour_root)
    opts = {"weights": str(tiny_vlm), "frames": "2", "max_new_tokens": "6", "size": "64"}
    cap = load_captioner("hf", opts, device="cpu")
    for part in (COLOURS[:2], COLOURS[2:4], COLOURS[4:]):
        r = caption(colour_root, "hf", options=opts, name="resident", device="cpu", batch_size=2,
                    source_ids=[by_colour[c] for c in part], captioner_obj=cap)
        assert (r.total, r.ok + r.error) == (2, 2)
    assert len(loads) == 1
    assert len(_rows(colour_root, "resident")) == 6
    # without the loaded captioner each batch loads the model again (what per-batch tasks pay)
    caption(colour_root, "hf", options=opts, name="resident-2", device="cpu", source_ids=[by_colour["red"]])
    assert len(loads) == 2


def test_batches_check_the_meta_another_batch_wrote_first(colour_root, monkeypatch):
    """Of batches that start at once, the first writes _meta.json; one whose configuration differs fails
    after losing that race (its first check ran before the file existed) and writes no row."""
    import curate.stages.caption as stage
    from curate.errors import CurateError

    by_colour = _sources_by_colour(colour_root)
    r = stage.caption(colour_root, "colour", name="race", source_ids=[by_colour["red"]])
    assert r.ok == 1
    real, calls = stage.check_meta, []

    def late(*a, **k):  # the first check saw no _meta.json yet
        calls.append(a)
        if len(calls) > 1:
            real(*a, **k)

    monkeypatch.setattr(stage, "check_meta", late)
    with pytest.raises(CurateError, match="--name"):
        stage.caption(colour_root, "colour", name="race", options={"prompt": "What colour?"},
                      source_ids=[by_colour["yellow"]])
    assert len(calls) == 2 and len(_captions(colour_root, "race")) == 1
    monkeypatch.setattr(stage, "check_meta", real)
    assert stage.caption(colour_root, "colour", name="race", source_ids=[by_colour["yellow"]]).ok == 1


def test_caption_embeddings_per_batch_equal_the_whole_root_and_wait_for_the_captions(colour_root, tiny_clip):
    """`embed --caption captions:NAME` per batch: clip vectors copied, texts embedded, only after the batch's
    captions are committed; the same vectors as one whole-root run."""
    import numpy as np

    from curate.stages.caption import CaptionsPending, caption
    from curate.stages.embed import embed

    by_colour = _sources_by_colour(colour_root)
    a, b = [by_colour[c] for c in COLOURS[:3]], [by_colour[c] for c in COLOURS[3:]]  # red | yellow: one ok each
    opts = {"model_config": tiny_clip["model_config"], "weights": tiny_clip["weights"], "frames": "2"}
    embed(colour_root, "clip", options=opts, name="vectors", device="cpu")  # the clip vectors to copy
    kw = dict(options=opts, device="cpu", caption="captions:perbatch")
    with pytest.raises(CaptionsPending, match="caption the batch first"):
        embed(colour_root, "clip", source_ids=a, **kw)  # no batch is captioned yet: no captions/perbatch at all
    caption(colour_root, "colour", name="perbatch", source_ids=a)
    with pytest.raises(CaptionsPending, match="caption the batch first"):
        embed(colour_root, "clip", source_ids=b, **kw)  # batch b is not captioned yet
    assert not (colour_root / "embeddings" / "clip_perbatch").exists()
    ra = embed(colour_root, "clip", source_ids=a, **kw)
    assert ra.extra["name"] == "clip_perbatch"
    assert (ra.total, ra.ok, ra.extra["without_caption"], ra.extra["video_reused"]) == (1, 1, 2, 1)
    caption(colour_root, "colour", name="perbatch", source_ids=b)
    rb = embed(colour_root, "clip", source_ids=b, **kw)
    assert (rb.total, rb.ok) == (1, 1)
    assert [embed(colour_root, "clip", source_ids=s, **kw).total for s in (a, b)] == [0, 0]  # reruns add nothing

    caption(colour_root, "colour", name="oneshot")
    embed(colour_root, "clip", options=opts, device="cpu", caption="captions:oneshot")
    per = read_table(colour_root / "embeddings" / "clip_perbatch").set_index("clip_id").sort_index()
    one = read_table(colour_root / "embeddings" / "clip_oneshot").set_index("clip_id").sort_index()
    assert per.index.is_unique and list(per.index) == list(one.index) and len(per) == 2
    for col in ("video_emb", "text_emb"):
        np.testing.assert_allclose(np.stack(per[col]), np.stack(one[col]), atol=1e-6)
    meta = json.loads((colour_root / "embeddings" / "clip_perbatch" / "_meta.json").read_text())
    assert meta["caption"] == "captions:perbatch" and meta["options"] == opts


def test_one_batch_captioned_twice_at_once_keeps_one_row_per_clip(colour_root):
    """Two workers on one batch (a lease taken over from a worker that was only slow): the second commits
    while the first is generating; the first's commit then adds no second row for any clip."""
    from curate.stages.caption import caption, load_captioner

    by_colour = _sources_by_colour(colour_root)
    batch = [by_colour[c] for c in ("red", "yellow", "blue")]

    class OtherWorkerCommitsFirst:
        """The colour captioner; its first generate call lets another worker caption the whole batch."""

        def __init__(self) -> None:
            self.inner, self.interleaved = load_captioner("colour", device="cpu"), None

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def caption_batch(self, inputs):
            if self.interleaved is None:
                self.interleaved = caption(colour_root, "colour", name="twice", source_ids=batch)
            return self.inner.caption_batch(inputs)

    cap = OtherWorkerCommitsFirst()
    first = caption(colour_root, "colour", name="twice", source_ids=batch, captioner_obj=cap)
    assert first.total == 3 and cap.interleaved.total == 3  # both took all of it: neither saw the other's rows
    t = _captions(colour_root, "twice")
    assert sorted(t.clip_id) == sorted(c for c, col in _clip_colours(colour_root).items() if col in
                                       ("red", "yellow", "blue"))
    assert t.clip_id.is_unique


def test_caption_batches_on_a_bucket(colour_root, s3, tmp_path):
    """Two processes caption two batches of a root in an S3 bucket at once: _meta.json created once (put-if-
    absent), one row per clip, the captions of a local whole-root run, no lease left behind."""
    import s3fs

    from curate.stages.caption import caption
    from curate.store import Root

    root = f"{s3}/captioned"
    curate("ingest", colour_root.parent / "list.csv", "--root", root)
    curate("split", "--root", root, "--detector", "none", "--min-clip-s", "0.5")
    by_colour = _sources_by_colour(colour_root)  # the same source list: the same source ids
    assert set(Root(root).sources.keys()) == set(by_colour.values())
    files = []
    for i, part in enumerate((COLOURS[::2], COLOURS[1::2])):
        f = tmp_path / f"batch{i}.txt"
        f.write_text("\n".join(by_colour[c] for c in part))
        files.append(f)
    runs = curate_parallel([["caption", "--root", root, "-c", "colour", "--source-ids", f] for f in files])
    assert [r["total"] for r in runs] == [3, 3]
    caption(colour_root, "colour", name="s3-reference")
    got = Root(root).captions("colour").read()
    assert got.clip_id.is_unique and len(got) == 6
    want = _rows(colour_root, "s3-reference")
    pd.testing.assert_frame_equal(got[ROW].sort_values("clip_id").reset_index(drop=True), want)
    assert Root(root).caption_meta("colour")["captioner"] == "colour"
    fs = s3fs.S3FileSystem()
    locks = f"{s3[len('s3://'):]}/captioned/.locks"
    assert not fs.exists(locks) or not [p for p in fs.ls(locks) if "caption" in p]
