"""The `viclip` encoder: parity with the reference outputs, checkpoint round trips, strict loading, offline mode."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from curate.errors import CurateError, WeightsUnavailable
from curate.plugins import get_encoder

REPO = Path(__file__).resolve().parents[1]


def _parity_dir() -> Path:
    root = Path(os.environ.get("CURATE_PARITY_DIR") or REPO.parent / "shared" / "fixtures" / "parity")
    d = root / "viclip"
    if not (d / "viclip_tiny.pth").is_file():
        pytest.skip(f"ViCLIP parity fixtures not found under {root} (set CURATE_PARITY_DIR)")
    return d


@pytest.fixture(scope="module")
def parity():
    d = _parity_dir()
    enc = get_encoder("viclip").create(weights=str(d / "viclip_tiny.pth"), config=str(d / "config.json"), device="cpu")
    return d, enc


# -- (a) parity with the reference ---------------------------------------------------------------

def test_listing_plugins_does_not_import_torch():
    import subprocess

    code = ("import sys; from curate.plugins import get_encoders; e = get_encoders(); "
            "assert 'viclip' in e and e['viclip'].options and e['viclip'].description; "
            "assert 'torch' not in sys.modules, 'listing plugins imported torch'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    opts = get_encoder("viclip").options
    assert set(opts) == {"weights", "size", "frames", "image_size", "config", "precision"}


def test_parity_info(parity):
    d, enc = parity
    info = enc.info
    assert info.name == "viclip" and info.embed_dim == 48 and info.num_frames == 8 and info.frame_size == 64
    assert info.video_emb_shape == (48,)
    assert info.weights == str(d / "viclip_tiny.pth")
    assert enc.frame_indices(80, 25.0) == [5, 15, 25, 35, 45, 55, 65, 75]


def test_parity_preprocessing(parity):
    d, enc = parity
    frames = np.load(d / "frames.npy")
    ref = np.load(d / "pixel_values.npy")
    mine = np.stack([enc.preprocess(f).numpy() for f in frames])
    assert mine.shape == ref.shape == (2, 8, 3, 64, 64) and mine.dtype == np.float32
    np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-6)
    # a colour swap must be caught at this tolerance
    assert np.abs(np.stack([enc.preprocess(f[..., ::-1]).numpy() for f in frames]) - ref).max() > 0.1


def test_parity_tokens(parity):
    d, enc = parity
    captions = json.loads((d / "captions.json").read_text())
    ids = enc.tokenize(captions)
    ref = np.load(d / "token_ids.npy")
    assert ids.shape == ref.shape == (3, 32)
    np.testing.assert_array_equal(ids, ref.astype(np.int64))
    assert ids[2, -1] == 49407  # truncated caption: EOT forced at the last position


def test_parity_embeddings(parity):
    d, enc = parity
    pixel_values = np.load(d / "pixel_values.npy")
    captions = json.loads((d / "captions.json").read_text())
    video = enc.embed_video_batch(pixel_values)
    text = enc.embed_text_batch(captions)
    ref_v, ref_t = np.load(d / "video_emb.npy"), np.load(d / "text_emb.npy")
    assert video.shape == (2, 48) and text.shape == (3, 48)
    assert video.dtype == np.float32 and text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(video, axis=1), 1, atol=1e-6)
    assert np.abs(video - ref_v).max() < 1e-4
    assert np.abs(text - ref_t).max() < 1e-4
    np.testing.assert_allclose(video @ text.T, np.load(d / "cos_sim.npy"), atol=1e-5)
    sim = np.exp(100 * video @ text.T)
    np.testing.assert_allclose(sim / sim.sum(1, keepdims=True), np.load(d / "sim.npy"), atol=1e-5)
    # list input (the embed stage's call) equals the batch tensor input
    import torch

    listed = enc.embed_video_batch([torch.from_numpy(p) for p in pixel_values])
    np.testing.assert_allclose(listed, video, atol=1e-6)
    # raw text embedding too (un-normalised)
    with torch.inference_mode():
        raw = enc.model.encode_text(torch.from_numpy(enc.tokenize(captions))).numpy()
    np.testing.assert_allclose(raw, np.load(d / "text_emb_raw.npy"), atol=5e-5)
    with torch.inference_mode():
        raw_v = enc.model.encode_vision(torch.from_numpy(pixel_values)).numpy()
    np.testing.assert_allclose(raw_v, np.load(d / "video_emb_raw.npy"), atol=5e-5)


def test_parity_is_sensitive_to_time(parity):
    """Reversed frame order and a zeroed temporal embedding must change the video embedding."""
    import torch

    d, enc = parity
    pixel_values = np.load(d / "pixel_values.npy")
    ref_v = np.load(d / "video_emb.npy")
    assert np.abs(enc.embed_video_batch(pixel_values[:, ::-1].copy()) - ref_v).max() > 1e-2
    tpe = enc.model.vision_encoder.temporal_positional_embedding
    saved = tpe.detach().clone()
    try:
        with torch.no_grad():
            tpe.zero_()
        assert np.abs(enc.embed_video_batch(pixel_values) - ref_v).max() > 1e-2
    finally:
        with torch.no_grad():
            tpe.copy_(saved)
    # one frame (an image) uses the mean temporal embedding
    single = enc.embed_video_batch(pixel_values[:, :1].copy())
    assert single.shape == (2, 48) and np.isfinite(single).all()


def test_fixture_sizes_inferred_from_shapes():
    from curate.encoders.viclip import infer_config, read_checkpoint

    d = _parity_dir()
    state, _ = read_checkpoint(d / "viclip_tiny.pth")
    cfg, guessed = infer_config(state)
    assert (cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers, cfg.num_frames, cfg.embed_dim) == \
        (64, 16, 64, 2, 8, 48)
    assert (cfg.text_width, cfg.text_layers, cfg.context_length, cfg.vocab_size) == (32, 2, 32, 49408)
    assert set(guessed) == {"vision_heads", "text_heads"}  # heads are not in the shapes: config= says 4


# -- (b) round trip through .pth and .safetensors -------------------------------------------------

TINY = {"image_size": 32, "patch_size": 16, "vision_width": 128, "vision_layers": 2, "vision_heads": 2,
        "num_frames": 4, "embed_dim": 24, "text_width": 64, "text_layers": 2, "text_heads": 1,
        "context_length": 32, "vocab_size": 49408}


@pytest.fixture(scope="module")
def tiny_random(tmp_path_factory):
    d = tmp_path_factory.mktemp("viclip")
    cfg = d / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    enc = get_encoder("viclip").create(weights="random", config=str(cfg), device="cpu")
    return d, cfg, enc


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(2, 4, 40, 50, 3), dtype=np.uint8)
    return frames, ["a dog runs on the beach", "Two PEOPLE cooking & talking!"]


def test_random_weights(tiny_random):
    _, _, enc = tiny_random
    assert enc.info.weights == "random" and enc.info.embed_dim == 24 and enc.info.frame_size == 32
    frames, caps = _inputs()
    x = [enc.preprocess(f) for f in frames]
    assert tuple(x[0].shape) == (4, 3, 32, 32)
    v, t = enc.embed_video_batch(x), enc.embed_text_batch(caps)
    assert v.shape == (2, 24) and t.shape == (2, 24)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-6)
    assert np.abs(v[0] - v[1]).max() > 1e-3 and np.abs(t[0] - t[1]).max() > 1e-3
    assert enc.similarity(v, t).shape == (2,)


def test_roundtrip_pth_and_safetensors(tiny_random):
    import torch
    from safetensors.torch import save_file

    d, cfg, enc = tiny_random
    state = {k: v.detach().clone().contiguous() for k, v in enc.model.state_dict().items()}
    assert set(state) >= {"temp", "vision_encoder.conv1.weight", "text_encoder.text_projection"}
    pth = d / "tiny.pth"
    torch.save({"model": state}, pth)
    hf = d / "hf"
    hf.mkdir()
    save_file({f"model.{k}": v for k, v in state.items()}, str(hf / "model.safetensors"))  # prefixed -hf style
    plain_st = d / "plain.safetensors"
    save_file(state, str(plain_st))

    frames, caps = _inputs(1)
    x = [enc.preprocess(f) for f in frames]
    want_v, want_t = enc.embed_video_batch(x), enc.embed_text_batch(caps)

    # .pth with no config: every size comes from the shapes (heads 128/64=2 and 64/64=1 are guessed, with a warning)
    with pytest.warns(UserWarning, match="heads"):
        from_pth = get_encoder("viclip").create(weights=str(pth), device="cpu")
    from_dir = get_encoder("viclip").create(weights=str(hf), config=str(cfg), device="cpu")
    from_st = get_encoder("viclip").create(weights=str(plain_st), config=str(cfg), device="cpu")
    assert from_dir.info.extra["key_prefix_stripped"] == "model."
    for other in (from_pth, from_dir, from_st):
        assert other.info.embed_dim == 24 and other.info.num_frames == 4
        np.testing.assert_array_equal(other.embed_video_batch(x), want_v)
        np.testing.assert_array_equal(other.embed_text_batch(caps), want_t)


# -- (c) strict loading ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "wrong_shape", "unexpected"])
def test_bad_checkpoint_is_refused(tiny_random, case):
    import torch

    d, cfg, enc = tiny_random
    state = {k: v.detach().clone() for k, v in enc.model.state_dict().items()}
    if case == "missing":
        key = "vision_encoder.transformer.resblocks.1.ln_2.bias"
        del state[key]
    elif case == "wrong_shape":
        key = "text_encoder.text_projection"
        state[key] = torch.zeros(64, 25)
    else:
        key = "vision_encoder.extra_head.weight"
        state[key] = torch.zeros(3)
    p = d / f"bad_{case}.pth"
    torch.save({"model": state}, p)
    with pytest.raises(CurateError, match=key.replace(".", r"\.")):
        get_encoder("viclip").create(weights=str(p), config=str(cfg), device="cpu")


def test_not_a_viclip_checkpoint(tmp_path):
    import torch

    p = tmp_path / "other.pth"
    torch.save({"model": {"visual.conv1.weight": torch.zeros(8, 3, 4, 4)}}, p)
    with pytest.raises(CurateError, match="vision_encoder.conv1.weight"):
        get_encoder("viclip").create(weights=str(p), device="cpu")


def test_bad_options(tiny_random):
    with pytest.raises(CurateError, match="Unknown viclip option"):
        get_encoder("viclip").create(weights="random", bogus=1, device="cpu")
    with pytest.raises(CurateError, match="size"):
        get_encoder("viclip").create(weights="random", size="xl", device="cpu")
    d, cfg, enc = tiny_random
    import torch

    p = d / "for_frames.pth"
    torch.save({"model": enc.model.state_dict()}, p)
    with pytest.raises(CurateError, match="frames"):
        get_encoder("viclip").create(weights=str(p), config=str(cfg), frames=16, device="cpu")
    with pytest.raises(CurateError, match="image_size"):
        get_encoder("viclip").create(weights=str(p), config=str(cfg), image_size=64, device="cpu")


# -- (d) offline ----------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", ["OpenGVLab/ViCLIP-L-14-hf", "OpenGVLab/ViCLIP/ViClip-InternVid-10M-FLT.pth", None])
def test_offline_hub_id_fails_clearly(monkeypatch, tmp_path, weights):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "curate"))
    opts = {} if weights is None else {"weights": weights}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(WeightsUnavailable) as e:
            get_encoder("viclip").create(device="cpu", **opts)
    assert "local path" in str(e.value) and "weights=random" in str(e.value)


def test_presets_match_public_checkpoints():
    """L/14 and B/16 have the parameter counts and key shapes of the released checkpoints (meta tensors, no memory)."""
    from curate.encoders.viclip import PRESETS, build_viclip

    counts = {"l": 427_590_145, "b": 149_603_841}
    for size, n in counts.items():
        sd = build_viclip(PRESETS[size], meta=True).state_dict()
        assert sum(v.numel() for v in sd.values()) == n
        assert all(k == "temp" or k.startswith(("vision_encoder.", "text_encoder.")) for k in sd)
    sd = build_viclip(PRESETS["l"], meta=True).state_dict()
    assert tuple(sd["vision_encoder.conv1.weight"].shape) == (1024, 3, 1, 14, 14)
    assert tuple(sd["vision_encoder.positional_embedding"].shape) == (257, 1024)
    assert tuple(sd["vision_encoder.temporal_positional_embedding"].shape) == (1, 8, 1024)
    assert tuple(sd["vision_encoder.transformer.resblocks.23.attn.in_proj_weight"].shape) == (3072, 1024)
    assert tuple(sd["text_encoder.positional_embedding"].shape) == (32, 768)
    assert tuple(sd["text_encoder.transformer.resblocks.11.mlp.c_proj.weight"].shape) == (768, 3072)
