"""InternVid-style filtering: scorers on clips whose ordering is known, percentile cuts, --where, caps, presets."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import read_table

from curate.errors import CurateError
from curate.samples import make_video
from curate.stages.embed import embed
from curate.stages.filter import filter_clips
from curate.stages.ingest import ingest
from curate.stages.score import score
from curate.stages.split import split
from curate.stages.where import Where
from curate.store import Root

PRESETS = sorted((Path(__file__).parents[1] / "configs" / "presets").glob("*.yaml"))


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_clip):
    """Static, moving and duplicated clips: red (still), mandelbrot (zooming), and the mandelbrot video twice."""
    d = tmp_path_factory.mktemp("filt")
    make_video(d / "still_and_zoom.mp4", [("red", 50), ("mandelbrot", 50)])
    shutil.copy(d / "still_and_zoom.mp4", d / "copy.mp4")
    make_video(d / "bars.mp4", [("smptebars", 50)])
    lst = d / "l.csv"
    lst.write_text("url,caption\n"
                   f"{d / 'still_and_zoom.mp4'},a red screen then a fractal\n"
                   f"{d / 'copy.mp4'},something else entirely\n"
                   f"{d / 'bars.mp4'},color bars\n")
    r = d / "ds"
    ingest(r, lst)
    split(r, min_clip_s=0.5)
    embed(r, "clip", options=tiny_clip, device="cpu")
    score(r, scorers=["technical", "alignment", "motion", "dedup"])
    return r


def _clips(root):
    clips = read_table(root / "clips")
    src = read_table(root / "sources")[["source_id", "url"]]
    return clips.merge(src, on="source_id").merge(read_table(root / "scores"), on=["clip_id", "source_id", "duration_s"])


def test_motion_is_near_zero_for_a_still_clip_and_higher_for_a_moving_one(root):
    c = _clips(root)
    orig = c[c.url.str.endswith("still_and_zoom.mp4")].sort_values("start_frame")
    still, zoom = orig.motion.tolist()
    assert still < 0.01 and zoom > 0.1 and zoom > 10 * still  # a slow fractal zoom: ~0.15 px/frame


def test_duplicated_clip_is_removed_keeping_the_better_scored_copy(root):
    c = _clips(root).set_index("clip_id")
    orig = c[c.url.str.endswith("still_and_zoom.mp4")].sort_values("start_frame")
    copy = c[c.url.str.endswith("copy.mp4")].sort_values("start_frame")
    for (a, ra), (b, rb) in zip(orig.iterrows(), copy.iterrows()):
        worse, better = (a, b) if ra.clip_sim < rb.clip_sim else (b, a)
        assert c.loc[worse, "dup_of"] == better and c.loc[worse, "dup_sim"] > 0.999
    s = filter_clips(root, "dedup", max_dup_sim=0.98).as_dict()
    kept = set(read_table(root / "subsets" / "dedup" / "selection.parquet").clip_id)
    assert s["kept"] == len(c) - 2 and len(kept & set(orig.index) | kept & set(copy.index)) == 2
    for (a, ra), (b, rb) in zip(orig.iterrows(), copy.iterrows()):
        assert (a in kept) != (b in kept)
        assert (a in kept) == (ra.clip_sim >= rb.clip_sim)


def test_dedup_sim_matches_brute_force(root):
    emb = read_table(root / "embeddings" / "clip").set_index("clip_id")
    sc = read_table(root / "scores").set_index("clip_id")
    order = sorted(sc.index, key=lambda i: (-sc.clip_sim[i], i))
    v = np.stack([emb.video_emb[i] for i in order]).astype(np.float32)
    sims = v @ v.T
    for k, cid in enumerate(order):
        expected = -1.0 if k == 0 else float(sims[k, :k].max())
        assert sc.dup_sim[cid] == pytest.approx(expected, abs=2e-3)  # float16 storage


def test_aesthetic_scorer_matches_the_predictor_by_hand(root, tiny_clip, tmp_path):
    import torch

    from curate.encoders.clip import ClipEncoder
    from curate.media.video import get_frames, open_video
    from curate.scorers.aesthetic import build_mlp

    torch.manual_seed(1)
    mlp = build_mlp(32)
    ckpt = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"  # the original key layout: layers.{0,2,4,6,7}
    torch.save({f"layers.{k}": v for k, v in mlp.state_dict().items()}, ckpt)
    opts = {"weights": str(ckpt), "clip_model": "curate-tiny-clip", "clip_weights": tiny_clip["weights"],
            "model_config": tiny_clip["model_config"], "device": "cpu"}
    score(root, scorers=["aesthetic"], options={"aesthetic": {**opts, "recipe": "internvid"}})
    got = read_table(root / "scores").set_index("clip_id").aesthetic
    clip = read_table(root / "clips").iloc[0]
    src = read_table(root / "sources").set_index("source_id").loc[clip.source_id]
    enc = ClipEncoder(device="cpu", model="curate-tiny-clip", weights=tiny_clip["weights"],
                      model_config=tiny_clip["model_config"])
    n = clip.end_frame - clip.start_frame
    frames = get_frames(open_video(root / src.media_path), [clip.start_frame + int(n / 4 * i + n / 8) for i in range(4)])
    feats = torch.nn.functional.normalize(enc.model.encode_image(enc.preprocess(frames)), dim=-1)
    with torch.inference_mode():
        expected = mlp.eval()(feats).squeeze(-1).max().item()
    assert got[clip.clip_id] == pytest.approx(expected, abs=1e-4)
    # rerunning does not recompute (incremental); another recipe is a separate run over cleared scores
    assert score(root, scorers=["aesthetic"], options={"aesthetic": opts}).error == 0


def test_aesthetic_predictor_with_wrong_width_is_refused(root, tiny_clip, tmp_path):
    import torch

    from curate.scorers.aesthetic import AestheticScorer, build_mlp

    ckpt = tmp_path / "p.pth"
    torch.save({f"layers.{k}": v for k, v in build_mlp(768).state_dict().items()}, ckpt)
    s = AestheticScorer(weights=str(ckpt), clip_model="curate-tiny-clip", clip_weights=tiny_clip["weights"],
                        model_config=tiny_clip["model_config"], device="cpu")
    with pytest.raises(CurateError, match="768-d CLIP embeddings"):
        s.compute(Root(root), pa.array(["x"]))


@pytest.fixture
def synthetic(tmp_path):
    """A scores table written directly: values with ties, two sources."""
    root = Root(tmp_path / "syn")
    vals = [0.9, 0.8, 0.7, 0.7, 0.7, 0.5, 0.4, 0.3, None, 0.1]
    t = pa.table({"clip_id": [f"c{i:02d}" for i in range(10)], "source_id": ["a"] * 5 + ["b"] * 5,
                  "duration_s": [1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10], "clip_sim": vals,
                  "aesthetic": [5.0, 4, 3, 6, 4.5, 4, 5, 5, 5, 5], "motion": [0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                  "dup_sim": [-1.0, 0.99, 0.5, 0.1, 0.2, 0.3, 0.97, 0.98, 0.1, 0.1],
                  # content scorers (text, nsfw, quality), for the presets that use them
                  "text_area": [0.0, 0.05, 0, 0, 0.01, 0, 0, 0, 0, 0], "nsfw": [0.01] * 9 + [0.9],
                  "sharpness": [300.0, 250, 5, 400, 300, 200, 100, 150, 120, 80],
                  "black_frac": [0.0] * 8 + [1.0, 0], "frozen_frac": [0.0] * 7 + [1.0, 0, 0]})
    root.scores.rewrite(t)
    return root


def _kept(root, subset):
    return sorted(read_table(root.subset_dir(subset) / "selection.parquet").clip_id)


def test_top_percent_keeps_exactly_ceil_p_n_with_ties_by_clip_id(synthetic):
    s = filter_clips(synthetic, "t30", top_percent=30).as_dict()
    # 9 rankable (one null): ceil(0.3*9)=3 -> 0.9, 0.8 and the first 0.7 by clip id
    assert s["kept"] == math.ceil(0.3 * 9) == 3 and _kept(synthetic, "t30") == ["c00", "c01", "c02"]
    s = filter_clips(synthetic, "t50", top_percent=50).as_dict()
    assert _kept(synthetic, "t50") == ["c00", "c01", "c02", "c03", "c04"]  # ceil(4.5)=5
    # after absolute rules: only clips >= 3 s are ranked (8 of them, 7 with a score): ceil(0.3*7) = 3
    s = filter_clips(synthetic, "flt", min_duration=3, top_percent=30).as_dict()
    assert _kept(synthetic, "flt") == ["c02", "c03", "c04"] and s["funnel"]["min_duration"] == 2


def test_where_expression_filters_and_cannot_run_code(synthetic):
    filter_clips(synthetic, "w", where="clip_sim >= 0.5 and (aesthetic > 4.5 or motion < 1)")
    assert _kept(synthetic, "w") == ["c00", "c03"]
    filter_clips(synthetic, "w2", where=["0.2 < clip_sim <= 0.7", "not motion == 6"])
    assert _kept(synthetic, "w2") == ["c02", "c03", "c04", "c05", "c07"]
    for bad in ("__import__('os').system('touch /tmp/pwned')", "clip_sim.__class__", "[c for c in x]",
                "open('/etc/passwd')", "lambda: 1"):
        with pytest.raises(CurateError, match="not allowed|syntax"):
            filter_clips(synthetic, "bad", where=bad)
    with pytest.raises(CurateError, match="unknown column"):
        filter_clips(synthetic, "bad", where="nope > 1")
    assert not Path("/tmp/pwned").exists()
    assert Where("isnull(clip_sim)").mask({"clip_sim": np.array([1.0, np.nan])}).tolist() == [False, True]


def test_max_per_source_keeps_the_best_of_each_source(synthetic):
    s = filter_clips(synthetic, "cap", max_per_source=2).as_dict()
    assert _kept(synthetic, "cap") == ["c00", "c01", "c05", "c06"] and s["funnel"]["max_per_source"] == 6
    filter_clips(synthetic, "cap2", max_per_source=1, per_source_by="motion")
    assert _kept(synthetic, "cap2") == ["c04", "c09"]


def test_thresholds_on_every_scorer_column(synthetic):
    s = filter_clips(synthetic, "x", min_aesthetic=4.5, max_dup_sim=0.98, min_motion=1).as_dict()
    assert _kept(synthetic, "x") == ["c03", "c04", "c06", "c08", "c09"]
    assert s["dropped_by_rule"] == {"min_aesthetic": 3, "min_motion": 1, "max_dup_sim": 2}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_load_and_run(synthetic, preset):
    s = filter_clips(synthetic, f"p-{preset.stem}", preset=preset.stem).as_dict()
    assert 0 < s["kept"] < s["total"]
    assert json.loads((synthetic.subset_dir(f"p-{preset.stem}") / "filter.json").read_text())["options"]


def test_presets_are_found_by_name_and_explicit_options_override(synthetic):
    s = filter_clips(synthetic, "o", preset="internvid-aes", min_aesthetic=5.5).as_dict()
    assert [r["value"] for r in s["rules"]] == [5.5]
    with pytest.raises(CurateError, match="No preset"):
        filter_clips(synthetic, "o", preset="nope")


def test_report_writes_valid_images_and_embeds_in_the_card(root):
    from PIL import Image

    from curate.query.report import make_report
    from curate.stages.publish import publish

    filter_clips(root, "rep", min_duration=0.5, max_dup_sim=0.98)
    publish(root, "rep", shard_size=10)
    shard = next((root / "subsets" / "rep" / "shards").glob("*.tar"))
    import tarfile

    with tarfile.open(shard) as tar:  # filtered on dup_sim, not on an alignment score: embeddings still shipped
        assert any(n.endswith(".npy") for n in tar.getnames())
    r = make_report(root, "rep", top_k=3)
    names = {Path(p).name for p in r["images"]}
    assert {"funnel.png", "hist_clip_sim.png", "hist_motion.png", "contact_clip_sim.png", "hist_dup_sim.png"} <= names
    for p in r["images"]:
        with Image.open(p) as im:
            im.verify()
            assert im.format == "PNG"
    card = (root / "subsets" / "rep" / "README.md").read_text()
    assert "![Filter funnel](report/funnel.png)" in card and card.count("<!-- curate-report -->") == 1
    make_report(root, "rep", top_k=3)  # again: the section is replaced, not appended
    assert (root / "subsets" / "rep" / "README.md").read_text().count("<!-- curate-report -->") == 1
    page = Path(r["page"]).read_text()
    assert "<img src='hist_dup_sim.png'" in page
