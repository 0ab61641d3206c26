"""`curate process` (split + embed in one decode pass) gives the clips and embeddings of the simple path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import read_table

from curate.stages.embed import embed
from curate.stages.ingest import ingest
from curate.stages.process import process
from curate.stages.split import split


@pytest.fixture(scope="module")
def roots(tmp_path_factory, source_list, tiny_clip):
    d = tmp_path_factory.mktemp("proc")
    simple, fused = d / "simple", d / "fused"
    for r in (simple, fused):
        ingest(r, source_list)
    split(simple, min_clip_s=0.5, max_clip_s=2.0)
    embed(simple, "clip", options={**tiny_clip, "decoder": "ffmpeg"}, device="cpu", batch_size=3)
    res = process(fused, "clip", options=tiny_clip, min_clip_s=0.5, max_clip_s=2.0, device="cpu", batch_size=3)
    return simple, fused, res


def test_fused_pass_gives_the_same_clips_as_split(roots):
    simple, fused, res = roots
    a = read_table(simple / "clips").drop(columns=["updated_at"]).sort_values("clip_id").reset_index(drop=True)
    b = read_table(fused / "clips").drop(columns=["updated_at"]).sort_values("clip_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert res.ok == 3 and res.extra["clips"] == len(b)


def test_fused_pass_gives_the_same_embeddings_as_embed_with_the_ffmpeg_decoder(roots):
    simple, fused, _ = roots
    a = read_table(simple / "embeddings" / "clip").set_index("clip_id").sort_index()
    b = read_table(fused / "embeddings" / "clip").set_index("clip_id").sort_index()
    assert list(a.index) == list(b.index) and set(b.status) == {"ok"}
    np.testing.assert_allclose(np.stack(a.video_emb.to_numpy()), np.stack(b.video_emb.to_numpy()), atol=1e-5)


def test_fused_pass_is_idempotent_and_embeds_sources_split_earlier(roots, tiny_clip, tmp_path, source_list):
    _, fused, _ = roots
    again = process(fused, "clip", options=tiny_clip, min_clip_s=0.5, max_clip_s=2.0, device="cpu")
    assert again.total == 0 and again.extra["embedded_separately"] == 0
    r = tmp_path / "mixed"
    ingest(r, source_list)
    split(r, min_clip_s=0.5, max_clip_s=2.0)  # already split: process only embeds them
    res = process(r, "clip", options=tiny_clip, min_clip_s=0.5, max_clip_s=2.0, device="cpu")
    assert res.total == 0 and res.extra["embedded_separately"] == len(read_table(r / "clips"))


def test_ffmpeg_frames_have_the_colours_decord_sees(tmp_path):
    """The one-pass and ffmpeg-decoder paths read I420 and convert only sampled frames: a red shot must
    reach the encoder red (planes in the right order), matching decord's RGB frame of the same size."""
    from curate.media.video import Stream, decode_frames, get_frames, open_video, yuv_to_rgb
    from curate.samples import make_video

    path = tmp_path / "rb.mp4"
    make_video(path, [("red", 10), ("blue", 10), ("testsrc2", 10)], size=(320, 240))
    frames = [yuv_to_rgb(f) for f in decode_frames(path, Stream(160, 120, "yuv420p", "area"))]
    assert len(frames) == 30 and frames[0].shape == (120, 160, 3)
    red, blue = frames[5].reshape(-1, 3).mean(0), frames[15].reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 40 and red[2] < 40, red
    assert blue[2] > 200 and blue[0] < 40 and blue[1] < 40, blue
    ref = get_frames(open_video(path, size=(160, 120)), [5, 15, 25])
    diff = np.abs(np.stack([frames[5], frames[15], frames[25]]).astype(int) - ref.astype(int)).mean()
    assert diff < 6, diff  # scaler and rounding differ; a colour or plane mix-up is off by ~100


@pytest.mark.parametrize("size,small", [((456, 256), (256, 144)), ((398, 226), (256, 146)), ((224, 224), (256, 144))])
def test_detector_frames_resized_in_yuv_match_resizing_the_picture(size, small):
    """Scene detectors see I420 planes resized then converted; that must be the same picture as converting
    then resizing, also for heights not divisible by 4 (the U and V planes do not start on a row)."""
    import cv2

    from curate.media.video import yuv_to_bgr

    (w, h), rng = size, np.random.default_rng(0)
    bgr = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (15, 15), 5)
    bgr[: h // 2, : w // 2] = (0, 0, 255)  # a red quarter: U/V swapped would turn it blue
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    got = yuv_to_bgr(yuv, small)
    ref = cv2.resize(cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420), small, interpolation=cv2.INTER_LINEAR)
    assert got.shape == (small[1], small[0], 3)
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 3


def test_scene_frames_spill_to_disk_and_come_back_unchanged(tmp_path):
    """A scene longer than the RAM budget goes on in a file; every frame reads back as written, also
    across the cut that starts the next scene."""
    from curate.stages.process import _SceneFrames

    frames = [np.full((6, 4), i, np.uint8) for i in range(40)]
    sf = _SceneFrames(tmp_path, (6, 4), ram_bytes=10 * 24)  # room for 10 frames in RAM
    for f in frames[:25]:
        sf.append(f)
    assert sf.disk is not None and sf.n == 25 and len(list(tmp_path.iterdir())) == 1
    assert [int(sf.get(i)[0, 0]) for i in range(25)] == list(range(25))
    sf.drop_before(12)  # a cut at frame 12: frames 12..24 stay (13 > 10: still partly on disk)
    assert [int(sf.get(i)[0, 0]) for i in range(12, 25)] == list(range(12, 25))
    for f in frames[25:30]:
        sf.append(f)
    sf.drop_before(27)  # 3 frames left: back in RAM, the file removed
    assert sf.disk is None and list(tmp_path.iterdir()) == []
    for f in frames[30:]:
        sf.append(f)
    assert [int(sf.get(i)[0, 0]) for i in range(27, 40)] == list(range(27, 40))
    assert int(sf.get(99)[0, 0]) == 39  # past the end: the last frame, as decoders clamp
    sf.close()


def test_several_sources_decoded_at_once_give_the_same_tables(roots, tiny_clip, tmp_path, source_list):
    """--workers decodes sources side by side; the clips and embeddings are those of one at a time."""
    _, fused, _ = roots
    r = tmp_path / "parallel"
    ingest(r, source_list)
    res = process(r, "clip", options=tiny_clip, min_clip_s=0.5, max_clip_s=2.0, device="cpu", batch_size=2, workers=3)
    assert res.ok == 3 and res.error == 0
    for table, drop in (("clips", ["updated_at"]), ("embeddings/clip", ["updated_at", "video_emb", "text_emb"])):
        a = read_table(fused / table).drop(columns=drop).sort_values("clip_id").reset_index(drop=True)
        b = read_table(r / table).drop(columns=drop).sort_values("clip_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
    a = read_table(fused / "embeddings" / "clip").set_index("clip_id").sort_index()
    b = read_table(r / "embeddings" / "clip").set_index("clip_id").sort_index()
    np.testing.assert_allclose(np.stack(a.video_emb.to_numpy()), np.stack(b.video_emb.to_numpy()), atol=1e-5)


def test_an_embedding_is_written_only_after_its_clip_row():
    """The one pass's writer: embeddings wait for their source's clips; a source a concurrent run wrote, or
    one that ended as an error row, has none written; every write holds only sources whose clips are in."""
    from curate.progress import NullProgress, StageResult
    from curate.stages.process import _OnePassWriter

    clips_in: set[str] = set()
    writes: list[list[str]] = []

    def append_clips(sid, rows, transitions):
        if sid == "taken":  # a concurrent run wrote this source first
            return False
        clips_in.add(sid)
        return True

    def write(rows):
        assert all(r["clip_id"].rsplit("-", 2)[0] in clips_in for r in rows), rows  # the invariant
        writes.append([r["clip_id"] for r in rows])

    def embed(batch):
        return [{"clip_id": clip_id} for clip_id in batch]

    result = StageResult("process")
    result.total = 4
    w = _OnePassWriter(embed, write, append_clips, result, NullProgress(), batch_size=2, flush_every=1)
    ok, taken, bad = {"source_id": "a"}, {"source_id": "taken"}, {"source_id": "bad"}
    w.take("clip", ok, "a-0000000-0000010")
    w.take("clip", taken, "taken-0000000-0000010")  # a batch of 2: embedded now, before either source's end
    assert writes == []  # neither source's clips are written: both embeddings wait
    w.take("clip", bad, "bad-0000000-0000010")
    w.take("end", taken, ([{"status": "ok"}], []))
    w.take("end", ok, ([{"status": "ok"}, {"status": "ok"}], []))
    w.take("clip", ok, "a-0000010-0000020")
    w.take("end", bad, ([{"status": "error", "error": "boom"}], []))
    w.take("skip", {"source_id": "other"}, None)
    w.close()
    assert sorted(c for batch in writes for c in batch) == ["a-0000000-0000010", "a-0000010-0000020"]
    assert (result.ok, result.skipped, result.total, len(result.errors), result.extra["clips"]) == (1, 2, 2, 1, 2)
