"""The stages end to end on ffmpeg-made videos with a tiny random open_clip model (real Parquet, real ffmpeg)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import FPS, VIDEOS, cuts, read_table, snapshot

from curate.errors import CurateError
from curate.stages.embed import embed
from curate.stages.filter import filter_clips
from curate.stages.ingest import ingest
from curate.stages.publish import publish
from curate.stages.score import score
from curate.stages.split import shape_scenes, split

MAX_CLIP_S = 2.0


def run_all(root, source_list, tiny_clip):
    results = [ingest(root, source_list, workers=2)]
    results.append(split(root, min_clip_s=0.5, max_clip_s=MAX_CLIP_S))
    results.append(embed(root, "clip", options=tiny_clip, device="cpu", batch_size=4))
    results.append(score(root))
    results.append(filter_clips(root, "all", min_duration=0.5))
    results.append(publish(root, "all", shard_size=3, workers=2))
    return results


@pytest.fixture(scope="module")
def root(tmp_path_factory, source_list, tiny_clip):
    r = tmp_path_factory.mktemp("root") / "ds"
    run_all(r, source_list, tiny_clip)
    return r


def test_sources_are_probed_and_extra_columns_kept(root, videos):
    src = read_table(root / "sources")
    assert len(src) == 3 and set(src.status) == {"ok"}
    row = src[src.url == str(videos["three_shots"])].iloc[0]
    assert row.fps == FPS and (row.width, row.height) == (320, 240) and row.codec == "h264"
    assert row.num_frames == 150 and row.duration_s == pytest.approx(6.0, abs=0.05)
    assert json.loads(row.meta) == {"license": "cc-by"}
    assert (root / row.media_path).is_file()


def test_split_finds_hard_cuts_within_one_frame(root):
    clips = read_table(root / "clips")
    src = read_table(root / "sources")
    for name in ("three_shots", "two_shots"):
        sid = src[src.url.str.endswith(f"{name}.mp4")].source_id.iloc[0]
        got = clips[clips.source_id == sid].sort_values("start_frame")
        # every boundary is within one frame of a true cut, or splits a shot longer than MAX_CLIP_S
        true_cuts = {a for a, _ in cuts(VIDEOS[name])[1:]}
        long_shots = [(a, b) for a, b in cuts(VIDEOS[name]) if (b - a) / FPS > MAX_CLIP_S]
        for a in got.start_frame.iloc[1:]:
            near_cut = min(abs(a - c) for c in true_cuts) <= 1
            inside_long = any(s + 1 < a < e - 1 for s, e in long_shots)
            assert near_cut or inside_long, f"boundary at frame {a} is neither a cut nor a max-length split"
        starts = set(got.start_frame)
        for c in true_cuts:
            assert min(abs(s - c) for s in starts) <= 1, f"cut at frame {c} not found in {sorted(starts)}"
        assert (got.duration_s <= MAX_CLIP_S + 1e-9).all()


def test_long_scene_is_cut_into_equal_pieces_no_longer_than_max(root):
    clips = read_table(root / "clips")
    src = read_table(root / "sources")
    sid = src[src.url.str.endswith("long_shot.mp4")].source_id.iloc[0]
    got = clips[clips.source_id == sid].sort_values("start_frame")
    assert list(zip(got.start_frame, got.end_frame)) == [(0, 43), (43, 87), (87, 130)]
    assert got.start_s.iloc[1] == pytest.approx(43 / FPS)


def test_shape_scenes_drops_short_and_splits_long():
    ranges = [(0, 10), (10, 110), (110, 300)]
    assert shape_scenes(ranges, 25, min_clip_s=1.0, max_clip_s=4.0) == [(10, 110), (110, 205), (205, 300)]
    assert shape_scenes(ranges, 25, min_clip_s=0.0, max_clip_s=None) == ranges


def test_embeddings_are_unit_vectors_and_captions_shared_by_a_source(root):
    emb = read_table(root / "embeddings" / "clip")
    clips = read_table(root / "clips")
    assert set(emb.clip_id) == set(clips[clips.status == "ok"].clip_id)
    v = np.stack(emb.video_emb.to_numpy())
    assert v.shape[1] == 32 and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    merged = emb.merge(clips[["clip_id", "source_id", "caption"]], on="clip_id")
    with_caption = merged[merged.caption.notna()]
    for _, g in with_caption.groupby("source_id"):
        t = np.stack(g.text_emb.to_numpy())
        assert np.allclose(t, t[0], atol=1e-6)
    # different clips of a source get different video embeddings (frames really are per clip)
    g = merged.groupby("source_id").get_group(merged.source_id.iloc[0])
    assert not np.allclose(np.stack(g.video_emb.to_numpy())[0], np.stack(g.video_emb.to_numpy())[1])
    meta = json.loads((root / "embeddings" / "clip" / "_meta.json").read_text())
    assert meta["video_emb_shape"] == [32] and meta["num_frames"] == 8


def test_alignment_score_is_cosine_and_missing_caption_is_an_error(root):
    emb = read_table(root / "embeddings" / "clip")
    scores = read_table(root / "scores").set_index("clip_id")
    for _, r in emb.iterrows():
        if r.text_emb is None:
            assert np.isnan(scores.loc[r.clip_id, "clip_sim"])
            assert "no caption" in scores.loc[r.clip_id, "clip_sim_error"]
        else:
            assert scores.loc[r.clip_id, "clip_sim"] == pytest.approx(float(np.dot(r.video_emb, r.text_emb)), abs=1e-5)
    assert {"duration_s", "width", "height", "aspect", "fps"} <= set(scores.columns)


def test_filter_counts_match_the_scores_table(root):
    scores = read_table(root / "scores")
    t = float(scores.clip_sim.median())
    s = filter_clips(root, "half", min_sim=t, max_duration=1.9).as_dict()
    expected = scores[(scores.clip_sim >= t) & (scores.duration_s <= 1.9)]
    assert s["kept"] == len(expected) and s["total"] == len(scores)
    assert s["dropped_by_rule"]["min_sim"] == int((~(scores.clip_sim >= t)).sum())
    sel = read_table(root / "subsets" / "half" / "selection.parquet")
    assert set(sel.clip_id) == set(expected.clip_id)


def test_filter_asks_for_encoder_or_scores_when_ambiguous(tmp_path, root):
    with pytest.raises(CurateError, match="no scores"):
        filter_clips(tmp_path / "empty", "x", min_sim=0.1)
    with pytest.raises(CurateError, match="No scores for encoder 'viclip'"):
        filter_clips(root, "x", min_sim=0.1, encoder="viclip")


def test_published_shards_hold_every_kept_clip_decodable_with_exact_duration(root):
    import decord
    import webdataset as wds

    sel = read_table(root / "subsets" / "all" / "selection.parquet")
    clips = read_table(root / "clips").set_index("clip_id")
    emb = read_table(root / "embeddings" / "clip").set_index("clip_id")
    shards = sorted((root / "subsets" / "all" / "shards").glob("*.tar"))
    assert len(shards) == -(-len(sel) // 3)
    seen = set()
    for sample in wds.WebDataset([str(s) for s in shards], shardshuffle=False):
        meta = json.loads(sample["json"])
        key = sample["__key__"]
        seen.add(key)
        c = clips.loc[key]
        assert meta["start_s"] == pytest.approx(c.start_s) and meta["end_s"] == pytest.approx(c.end_s)
        assert meta["url"].endswith(".mp4") and "clip_sim" in meta["scores"]
        p = root / f"{key}.check.mp4"
        p.write_bytes(sample["mp4"])
        vr = decord.VideoReader(str(p))
        n = c.end_frame - c.start_frame
        assert abs(len(vr) - n) <= 1, (key, len(vr), n)
        assert abs(len(vr) / vr.get_avg_fps() - (c.end_s - c.start_s)) <= 1 / FPS + 1e-6
        p.unlink()
        import io

        assert np.allclose(np.load(io.BytesIO(sample["npy"])), emb.loc[key].video_emb)
    assert seen == set(sel.clip_id)
    ann = read_table(root / "subsets" / "all" / "annotations.parquet")
    assert set(ann.clip_id) == seen and set(ann.status) == {"ok"}
    card = (root / "subsets" / "all" / "README.md").read_text()
    assert f"| published | {len(seen)} |" in card and "curate-tiny-clip" in card and "torch" in card


def test_published_clip_shows_the_right_shot(root, videos):
    """The cut really starts at the clip's start: its first frame matches the source frame there."""
    import decord

    sel = read_table(root / "subsets" / "all" / "annotations.parquet").iloc[1]
    clips = read_table(root / "clips").set_index("clip_id")
    src = read_table(root / "sources").set_index("source_id")
    c = clips.loc[sel.clip_id]
    member = f"{sel.clip_id}.mp4"
    with tarfile.open(root / "subsets" / "all" / "shards" / sel.shard) as tar:
        data = tar.extractfile(member).read()
    p = root / "first.mp4"
    p.write_bytes(data)
    first = decord.VideoReader(str(p))[0].asnumpy().astype(float)
    source = decord.VideoReader(str(root / src.loc[c.source_id].media_path))
    same = np.abs(first - source[int(c.start_frame)].asnumpy()).mean()
    before = np.abs(first - source[max(0, int(c.start_frame) - 5)].asnumpy()).mean()
    p.unlink()
    assert same < 6 and (c.start_frame == 0 or same <= before)


def test_rerunning_every_stage_changes_nothing(root, source_list, tiny_clip):
    before = snapshot(root)
    results = run_all(root, source_list, tiny_clip)
    assert snapshot(root) == before
    ing, spl, emb = results[0], results[1], results[2]
    assert (ing.total, ing.skipped) == (0, 3) and spl.total == 0 and emb.total == 0


def test_embedding_set_with_other_options_needs_a_new_name(root, tiny_clip):
    with pytest.raises(CurateError, match="--name"):
        embed(root, "clip", options={**tiny_clip, "frames": "4"}, device="cpu")
    r = embed(root, "clip", options={**tiny_clip, "frames": "4"}, name="clip4f", device="cpu")
    assert r.ok == r.total > 0
    score(root, encoder="clip4f")
    cols = read_table(root / "scores").columns
    assert {"clip_sim", "clip4f_sim"} <= set(cols)
    with pytest.raises(CurateError, match="Several encoders"):
        filter_clips(root, "x", min_sim=0.0)


def test_decoding_yields_every_clip_of_many_sources_in_order(root):
    """More chunks than the read-ahead window: none may be dropped (a zip() over the iterator once lost one)."""
    from conftest import FirstFrameSampler

    from curate.media.frames import clip_groups, decode_clips
    from curate.store import Root

    groups = clip_groups(Root(root))
    many = [(src, [c]) for src, clips in groups for c in clips] * 3  # 3x every clip, one per chunk
    out = list(decode_clips(Root(root), FirstFrameSampler(), many, workers=1, frames_per_clip=1))
    assert [c["clip_id"] for c, _, _ in out] == [c["clip_id"] for _, cl in many for c in cl]
    assert all(err is None and shape == (1, 24, 32, 3) for _, shape, err in out)


def test_many_small_appends_are_compacted_without_changing_the_table(tmp_path):
    import pyarrow as pa

    from curate.store import Root

    t = Root(tmp_path / "r").clips
    for i in range(20):
        t.append(pa.table({"clip_id": [f"c{i:02d}"], "source_id": ["s"], "start_s": [float(i)]}))
    assert t.fragments() == 20  # one fragment per append
    before = t.read().sort_values("clip_id").reset_index(drop=True)
    t.maybe_compact(max_fragments=16)
    assert t.fragments() == 1
    pd.testing.assert_frame_equal(t.read().sort_values("clip_id").reset_index(drop=True), before)


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_detectors_find_hard_cuts_exactly(detector, videos):
    from curate.splitters.scenedetect import SceneDetectSplitter

    assert SceneDetectSplitter(detector)(videos["three_shots"], FPS, 150) == cuts(VIDEOS["three_shots"])


def test_threshold_detector_cuts_a_fade_through_black(tmp_path):
    import subprocess

    from curate.splitters.scenedetect import SceneDetectSplitter

    f = tmp_path / "fade.mp4"  # 3 s fading out to black at 2-3 s, then 3 s fading in from black
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=3",
                    "-f", "lavfi", "-i", "smptebars=size=320x240:rate=25:duration=3", "-filter_complex",
                    "[0:v]fade=t=out:st=2:d=1[a];[1:v]fade=t=in:st=0:d=1[b];[a][b]concat=n=2:v=1[o]", "-map", "[o]",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(f)], check=True)
    (a0, a1), (b0, b1) = SceneDetectSplitter("threshold")(f, FPS, 150)
    assert (a0, b1) == (0, 150) and abs(a1 - 75) <= 2 and a1 == b0


def test_a_table_appended_a_row_at_a_time_keeps_few_fragments_and_every_row(tmp_path):
    """Split appends once per source: with thousands of sources, readers would pay for thousands of
    fragments. maybe_compact keeps the count bounded without losing or duplicating a row."""
    import pyarrow as pa

    from curate.store import Root

    t = Root(tmp_path / "r").clips
    most = 0
    for i in range(60):
        t.append(pa.table({"clip_id": [f"c{i:04d}"], "source_id": [f"s{i}"], "start_s": [float(i)]}))
        t.maybe_compact(max_fragments=16)
        most = max(most, t.fragments())
    assert most <= 17
    assert sorted(t.read_arrow()["clip_id"].to_pylist()) == [f"c{i:04d}" for i in range(60)]


def test_a_crash_while_compacting_loses_and_duplicates_nothing(tmp_path):
    import os
    import subprocess
    import sys

    from curate.store import Root

    code = ("import sys, pyarrow as pa; from curate.store import Root\n"
            "t = Root(sys.argv[1]).clips\n"
            "for i in range(20):\n"
            "    t.append(pa.table({'clip_id': [f'c{i:02d}'], 'source_id': ['s'], 'start_s': [float(i)]}))\n"
            "t.compact()\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], env={**os.environ, "CURATE_CRASH_AT": "compact"})
    assert r.returncode != 0  # killed after compacting, before removing old versions
    t = Root(tmp_path / "r").clips
    assert sorted(t.read_arrow()["clip_id"].to_pylist()) == [f"c{i:02d}" for i in range(20)]
    t.compact()
    assert t.fragments() == 1
    assert sorted(t.read_arrow()["clip_id"].to_pylist()) == [f"c{i:02d}" for i in range(20)]


def test_after_a_crash_right_after_an_upsert_reads_see_the_newest_value_of_each_key(tmp_path):
    import os
    import subprocess
    import sys

    import pyarrow as pa

    from curate.store import Root

    t = Root(tmp_path / "r").clips
    t.append(pa.table({"clip_id": ["a", "b", "c"], "source_id": ["s"] * 3, "start_s": [1.0, 2.0, 3.0]}))
    code = ("import sys, pyarrow as pa; from curate.store import Root\n"
            "Root(sys.argv[1]).clips.upsert(pa.table({'clip_id': ['a'], 'source_id': ['s'], 'start_s': [10.0]}))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], env={**os.environ, "CURATE_CRASH_AT": "upsert"})
    assert r.returncode != 0
    want = {"a": 10.0, "b": 2.0, "c": 3.0}
    got = t.read_arrow(columns=["clip_id", "start_s"]).to_pylist()
    assert {row["clip_id"]: row["start_s"] for row in got} == want and len(got) == 3


@pytest.mark.parametrize("batch_rows", [2, 3, 1000])
def test_score_columns_merge_streaming_like_a_join(tmp_path, monkeypatch, batch_rows):
    """Scores merge into the table: the result is that of an outer join where new values win, whatever
    the batch size; merging the same values again writes nothing."""
    import pyarrow as pa

    import curate.stages.score as sc
    from curate.store import Root

    monkeypatch.setattr(sc, "MERGE_BATCH_ROWS", batch_rows)
    root = Root(tmp_path / "r").ensure()
    ids = [f"c{i:02d}" for i in range(12)]
    a = pa.table({"clip_id": ids[1::2][::-1], "x": [float(i) for i in range(6)]})  # unsorted on purpose
    b = pa.table({"clip_id": ids[0::2] + ["c03", "c99"], "y": [float(10 + i) for i in range(8)]})
    c = pa.table({"clip_id": ["c00", "c05", "c11"], "x": [-1.0, -5.0, -11.0]})
    for t in (a, b, c):
        assert sc.merge_into_scores(root, t)
    # c's x wins for its rows, a's x stays for the others; b's y where b has a row; nulls elsewhere
    want = pd.DataFrame({"clip_id": sorted(set(ids) | {"c99"})}).set_index("clip_id")
    want["x"] = pd.Series(dict(zip(a["clip_id"].to_pylist(), a["x"].to_pylist())))
    want.loc[c["clip_id"].to_pylist(), "x"] = c["x"].to_pylist()
    want["y"] = pd.Series(dict(zip(b["clip_id"].to_pylist(), b["y"].to_pylist())))
    got = root.scores.read().set_index("clip_id").sort_index()
    pd.testing.assert_frame_equal(got[["x", "y"]], want[["x", "y"]], check_names=False)
    version = root.scores.version()
    assert not sc.merge_into_scores(root, c) and root.scores.version() == version  # same values: no write


def test_a_table_of_an_older_version_is_read_then_migrated_on_its_first_write(tmp_path):
    """Roots written before Lance hold tables as directories of part-*.parquet: they are read as they
    are (the newest part wins for a key a crash left twice), and the first write turns them into Lance."""
    import pyarrow as pa

    from curate.store import Root

    t = Root(tmp_path / "r").clips
    t.path.mkdir(parents=True)
    rows = pa.table({"clip_id": [f"c{i:03d}" for i in range(200)], "source_id": ["s"] * 200,
                     "start_s": [float(i) for i in range(200)]})
    pq.write_table(t._conform(rows), t.path / "part-00000000000000000001-aaaaaaaa.parquet", row_group_size=2)
    pq.write_table(t._conform(pa.table({"clip_id": ["c000"], "source_id": ["s"], "start_s": [-1.0]})),
                   t.path / "part-00000000000000000002-bbbbbbbb.parquet")
    before = t.read().sort_values("clip_id").reset_index(drop=True)
    assert len(before) == 200 and before.start_s[0] == -1.0
    t.append(pa.table({"clip_id": ["c999"], "source_id": ["s"], "start_s": [9.0]}))
    assert not list(t.path.glob("part-*.parquet")) and (t.path / "_versions").is_dir()
    after = t.read().sort_values("clip_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(after.iloc[:200], before)
    assert after.clip_id.iloc[-1] == "c999"
