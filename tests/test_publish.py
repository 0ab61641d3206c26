"""Publish's cutting: the fast paths (stream copy where the cut falls on keyframes, chosen encodings) give the
same clips and published files as re-encoding every clip (real ffmpeg on videos with keyframes at known frames)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from curate.errors import CurateError
from curate.media.video import Encoding, Stream, copy_exact, cut_clip, decode_frames, keyframes, probe, video_packets
from curate.samples import make_video

FPS = 25
GOP = 25  # a keyframe every second, and at no other frame (-sc_threshold 0)
SHOTS = [("testsrc2", 50), ("mandelbrot", 50), ("smptebars", 60)]


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("gop") / "gop.mp4"
    make_video(p, SHOTS, fps=FPS, gop=GOP, audio=True)
    return p


def frames(path: Path) -> np.ndarray:
    pr = probe(path)
    return np.stack(list(decode_frames(path, Stream(pr.width, pr.height, "rgb24"))))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def test_keyframes_are_listed_from_the_packets(gop_video):
    keys = keyframes(gop_video)
    assert keys[:-1] == pytest.approx([i * GOP / FPS for i in range(160 // GOP + 1)])
    assert keys[-1] == pytest.approx(160 / FPS)  # the end of the stream
    assert copy_exact(keys, 1.0, 50, FPS) and copy_exact(keys, 6.0, 10, FPS)  # to a keyframe / to the end
    assert not copy_exact(keys, 1.0, 30, FPS) and not copy_exact(keys, 0.4, 15, FPS)


@pytest.mark.parametrize("start,n,copied", [(25, 50, True), (100, 60, True), (30, 40, False), (25, 30, False)])
def test_auto_cut_gives_the_frames_of_the_accurate_cut(tmp_path, gop_video, start, n, copied):
    src = frames(gop_video)
    keys = keyframes(gop_video)
    auto, accurate = tmp_path / "auto.mp4", tmp_path / "accurate.mp4"
    how = cut_clip(gop_video, auto, start / FPS, n, FPS, mode="auto", keys=keys)
    assert cut_clip(gop_video, accurate, start / FPS, n, FPS, mode="accurate") == "encode"
    assert how == ("copy" if copied else "encode")
    a, b = frames(auto), frames(accurate)
    assert len(a) == len(b) == n == video_packets(auto)
    if copied:  # a stream copy decodes to the source's own frames, bit for bit
        assert np.array_equal(a, src[start:start + n])
    assert psnr(b[0], src[start]) > 35 and psnr(b[-1], src[start + n - 1]) > 35
    assert psnr(a[0], b[0]) > 35 and psnr(a[-1], b[-1]) > 35
    assert probe(auto).has_audio and probe(auto).codec == "h264"


def test_auto_cut_agrees_with_accurate_when_the_video_starts_after_the_audio(tmp_path, gop_video):
    """ffmpeg -ss counts from the file's start (here the audio's): keyframes are listed on that time line."""
    import subprocess

    late = tmp_path / "late.mp4"  # video 0.2 s (5 frames) after the audio
    subprocess.run(["ffmpeg", "-v", "error", "-itsoffset", "0.2", "-i", str(gop_video), "-i", str(gop_video), "-map",
                    "0:v", "-map", "1:a", "-c", "copy", str(late)], check=True)
    keys = keyframes(late)
    assert keys[0] == pytest.approx(0.2)
    for start_s, n, copied in ((1.2, 50, True), (1.0, 50, False)):
        auto, accurate = tmp_path / "auto.mp4", tmp_path / "accurate.mp4"
        assert cut_clip(late, auto, start_s, n, FPS, mode="auto", keys=keys) == ("copy" if copied else "encode")
        cut_clip(late, accurate, start_s, n, FPS, mode="accurate")
        a, b = frames(auto), frames(accurate)
        assert len(a) == len(b) == n
        assert psnr(a[0], b[0]) > 35 and psnr(a[-1], b[-1]) > 35


def test_auto_reencodes_a_source_that_is_not_h264(tmp_path):
    src = tmp_path / "src.mkv"
    make_video(src, [("testsrc2", 20), ("smptebars", 20)], fps=FPS, codec="ffv1")
    assert keyframes(src) == []  # every FFV1 frame is a keyframe, but a copy would not be H.264
    dst = tmp_path / "c.mp4"
    assert cut_clip(src, dst, 0.0, 20, FPS, mode="auto") == "encode"
    assert probe(dst).codec == "h264" and video_packets(dst) == 20


def test_encoding_options_are_checked_and_used(tmp_path, gop_video):
    with pytest.raises(CurateError, match="preset must be one of"):
        Encoding(preset="turbo")
    with pytest.raises(CurateError, match="crf must be"):
        Encoding(crf=60)
    small, big = tmp_path / "small.mp4", tmp_path / "big.mp4"
    cut_clip(gop_video, small, 1.0, 50, FPS, encoding=Encoding("superfast", 30, threads=1))
    cut_clip(gop_video, big, 1.0, 50, FPS, encoding=Encoding("superfast", 12, threads=1))
    assert small.stat().st_size < big.stat().st_size
    assert video_packets(small) == video_packets(big) == 50


def published(root: Path, subset: str) -> dict[str, tuple[bytes, dict]]:
    out = {}
    for shard in sorted((root / "subsets" / subset / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.rsplit(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def test_publish_auto_and_accurate_publish_the_same_clips(tmp_path, gop_video, tiny_clip):
    from curate.stages.embed import embed
    from curate.stages.filter import filter_clips
    from curate.stages.ingest import ingest
    from curate.stages.publish import publish
    from curate.stages.score import score
    from curate.stages.split import split

    lst = tmp_path / "sources.csv"
    lst.write_text(f"url,caption\n{gop_video},shots\n")
    root = tmp_path / "root"
    ingest(root, lst)
    split(root, detector="content", min_clip_s=0.5, max_clip_s=1.2)  # 50/50/60 frames: cut into 25..30-frame clips
    embed(root, "clip", options=tiny_clip, device="cpu", batch_size=8)
    score(root)
    filter_clips(root, "a", min_duration=0.5)
    filter_clips(root, "b", min_duration=0.5)
    ra = publish(root, "a", cut="auto", shard_size=4, workers=2)
    rb = publish(root, "b", cut="accurate", shard_size=4, workers=2, preset="ultrafast", crf=20)
    assert ra.ok == rb.ok > 0 and ra.error == rb.error == 0
    assert 0 < ra.extra["copied"] < ra.ok and rb.extra.get("copied", 0) == 0  # some cuts fall between keyframes
    a, b = published(root, "a"), published(root, "b")
    assert a.keys() == b.keys()
    for key in a:
        ja, jb = json.loads(a[key]["json"]), json.loads(b[key]["json"])
        assert ja == jb
        pa, pb = tmp_path / "a.mp4", tmp_path / "b.mp4"
        pa.write_bytes(a[key]["mp4"])
        pb.write_bytes(b[key]["mp4"])
        fa, fb = frames(pa), frames(pb)
        assert len(fa) == len(fb) == round((ja["end_s"] - ja["start_s"]) * FPS)
        assert psnr(fa[0], fb[0]) > 30 and psnr(fa[-1], fb[-1]) > 30
    card_a = (root / "subsets" / "a" / "README.md").read_text()
    card_b = (root / "subsets" / "b" / "README.md").read_text()
    assert "stream copy where both cut points fall on the source's keyframes" in card_a
    assert "-preset ultrafast -crf 20" in card_b
    # a rerun with the same options keeps the shards; another CRF rebuilds them
    assert publish(root, "b", cut="accurate", preset="ultrafast", crf=20, shard_size=4).skipped == rb.ok
    assert publish(root, "b", cut="accurate", preset="ultrafast", crf=30, shard_size=4).skipped == 0
    # shards that an older curate cut with what is still the default encoding are kept
    for m in (root / "subsets" / "b" / "shards").glob("*.json"):
        m.write_text(json.dumps({**json.loads(m.read_text()), "cut": "accurate"}))
    assert publish(root, "b", cut="accurate", shard_size=4).skipped == rb.ok
    assert publish(root, "b", cut="auto", shard_size=4).skipped == 0


def test_publish_refuses_an_unknown_cut(tmp_path):
    from curate.stages.publish import publish

    with pytest.raises(CurateError, match="cut must be 'auto'"):
        publish(tmp_path / "root", "x", cut="fast")
