"""`curate features` (video_features-style per-frame CLIP features) and --show-pred."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import read_table

from curate.encoders.clip import OPENAI_NAMES, ClipEncoder
from curate.media.video import get_frames, open_video
from curate.stages.features import features, frame_times, show_predictions
from curate.stages.ingest import ingest


@pytest.fixture(scope="module")
def root(tmp_path_factory, videos):
    r = tmp_path_factory.mktemp("feat") / "ds"
    ingest(r, [str(videos["two_shots"])])  # 105 frames at 25 fps = 4.2 s
    return r


def test_frame_times_follow_video_features_modes():
    idx, ts, eff = frame_times(4.2, 25.0, 105, fps=2)
    assert ts == [0, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000] and eff == 2 and idx == [0, 12, 25, 38, 50, 62, 75, 88, 100]
    idx, ts, eff = frame_times(4.2, 25.0, 105, frames=3)
    assert len(idx) == 3 and ts[1] == pytest.approx(1400) and eff == pytest.approx(3 / 4.2)
    idx, ts, eff = frame_times(4.2, 25.0, 105)
    assert idx == list(range(105)) and eff == 25.0


def test_features_at_fps_are_raw_per_frame_embeddings_with_timestamps(root, tiny_clip):
    r = features(root, "clip", options=tiny_clip, fps=2, device="cpu", save_numpy=True)
    assert r.ok == 1
    row = read_table(root / "features" / "clip").iloc[0]
    f = np.asarray(row.features, np.float32).reshape(row["shape"])
    assert f.shape == (9, 32) and list(row.timestamps_ms) == [k * 500.0 for k in range(9)] and row.fps == 2.0
    enc = ClipEncoder(device="cpu", **{"model": "curate-tiny-clip", **tiny_clip})
    src = read_table(root / "sources").iloc[0]
    frames = get_frames(open_video(root / src.media_path), [0, 12, 25, 38, 50, 62, 75, 88, 100])
    np.testing.assert_allclose(f, enc.embed_frames(frames), atol=1e-5)
    assert not np.allclose(np.linalg.norm(f, axis=1), 1)  # raw, not normalised (as video_features)
    npy = root / "features_npy" / "clip"
    np.testing.assert_allclose(np.load(npy / f"{src.source_id}_clip.npy"), f)
    assert np.load(npy / f"{src.source_id}_timestamps_ms.npy").tolist() == list(row.timestamps_ms)
    assert features(root, "clip", options=tiny_clip, fps=2, device="cpu").skipped == 1


def test_show_pred_gives_per_frame_softmax_over_texts(root, tiny_clip):
    texts = ["a dog smiles", "a man is lifting", "color bars"]
    (sid, ts, p), = show_predictions(root, texts, options=tiny_clip, device="cpu")
    assert p.shape == (9, 3) and np.allclose(p.sum(1), 1)
    enc = ClipEncoder(device="cpu", **{"model": "curate-tiny-clip", **tiny_clip})
    f = np.asarray(read_table(root / "features" / "clip").features[0], np.float64).reshape(9, 32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    logits = enc.logit_scale * f @ enc.embed_text_batch(texts).astype(np.float64).T
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(p, expected, atol=1e-5)
    out = subprocess.run([sys.executable, "-m", "curate.cli", "features", "--root", str(root), "--fps", "2",
                          *[x for k, v in tiny_clip.items() for x in ("-o", f"{k}={v}")], "--device", "cpu",
                          "--show-pred", "a dog smiles", "--show-pred", "a man is lifting", "--json"],
                         capture_output=True, text=True, check=True)
    (pred,) = json.loads(out.stdout)
    assert pred["texts"] == ["a dog smiles", "a man is lifting"] and len(pred["probs"]) == 9


def test_all_nine_openai_model_names_map_to_open_clip_models_with_openai_weights():
    import open_clip

    assert len(OPENAI_NAMES) == 9
    for openai_name, oc_name in OPENAI_NAMES.items():
        assert oc_name in open_clip.list_models(), openai_name
        assert "openai" in open_clip.list_pretrained_tags_by_model(oc_name), openai_name
