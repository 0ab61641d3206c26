"""AskVideos-VideoCLIP encoder: parity with the reference on the shared tiny fixtures, and strict loading.

The fixtures (``shared/fixtures/parity/askvideos``, README section 2) hold tiny random checkpoints in the
original formats and every intermediate the reference computed; every load here goes through the public
plugin path ``get_encoder("askvideos").create(...)``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from curate.errors import CurateError, WeightsUnavailable
from curate.plugins import get_encoder

REPO = Path(__file__).resolve().parents[1]
PARITY = Path(os.environ.get("CURATE_PARITY_DIR", REPO.parent / "shared" / "fixtures" / "parity"))
FIX = PARITY / "askvideos"
if not (FIX / "askvideos_tiny.pth").is_file():
    pytest.skip(f"AskVideos parity fixtures not found in {FIX} (set CURATE_PARITY_DIR)", allow_module_level=True)

SPLIT = {
    "weights": FIX / "split" / "askvideos_clip_tiny.pth",
    "eva_weights": FIX / "split" / "eva_vit_g_tiny.pth",
    "qformer_weights": FIX / "split" / "blip2_qformer_tiny.pth",
}
TINY = {"tokenizer": str(FIX / "tokenizer"), "config": str(FIX / "config.json"), "image_size": "56", "device": "cpu"}


def ref(name: str) -> np.ndarray:
    return np.load(FIX / f"{name}.npy")


def captions() -> list[str]:
    return json.loads((FIX / "captions.json").read_text())


def create(**options):
    return get_encoder("askvideos").create(**{**TINY, **options})


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("CURATE_OFFLINE", "1")  # nothing in these tests may touch the network


@pytest.fixture(scope="module", params=["full", "split"])
def encoder(request):
    os.environ.setdefault("CURATE_OFFLINE", "1")
    if request.param == "full":
        return create(weights=str(FIX / "askvideos_tiny.pth"))
    return create(**{k: str(v) for k, v in SPLIT.items()})


def maxdiff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


# -- frames and preprocessing ------------------------------------------------------------------------------


def test_decord_decode_and_frame_indices_match_reference_frames(encoder):
    decord = pytest.importorskip("decord")
    expected = ref("decoded_frames")
    assert encoder.decode_size(96, 72) == (56, 56)
    for i in range(2):
        vr = decord.VideoReader(str(FIX / f"video_{i}.mkv"), height=56, width=56)
        idx = encoder.frame_indices(len(vr), float(vr.get_avg_fps()))
        assert idx == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18]
        np.testing.assert_array_equal(vr.get_batch(idx).asnumpy(), expected[i])


def test_short_clip_gives_all_its_frames(encoder):
    assert encoder.frame_indices(5, 25.0) == [0, 1, 2, 3, 4]
    assert encoder.frame_indices(32, 25.0) == list(range(0, 32, 2))
    with pytest.raises(ValueError):
        encoder.frame_indices(0, 25.0)


def test_preprocess_matches_pixel_values(encoder):
    frames, expected = ref("decoded_frames"), ref("pixel_values")
    for i in range(2):
        x = encoder.preprocess(frames[i])
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, 16, 56, 56)
        assert maxdiff(x.numpy(), expected[i]) <= 1e-6


def test_preprocess_resizes_frames_of_another_size(encoder):
    source = np.load(FIX / "frames.npy")[0]  # 20 frames at 72x96
    x = encoder.preprocess(source[encoder.frame_indices(len(source), 8.0)])
    assert tuple(x.shape) == (3, 16, 56, 56)
    # PIL bilinear is close to, not identical with, decord's resize (fixture README: <= 2 grey levels)
    assert maxdiff(x.numpy(), ref("pixel_values")[0]) < 3 / 255 / 0.26


# -- model intermediates and outputs -----------------------------------------------------------------------


def test_intermediates_match_reference(encoder):
    m = encoder.model
    pixels = torch.from_numpy(ref("pixel_values"))
    with torch.inference_mode():
        vit = m.vit_features(pixels.transpose(1, 2).flatten(0, 1))
        assert maxdiff(vit, ref("vit_features")) <= 5e-5
        fq = m.frame_queries(vit)
        assert maxdiff(fq, ref("frame_query_output")) <= 5e-5
        fh = m.frame_hidden_state(fq.reshape(2, 16, *fq.shape[1:]))
        assert maxdiff(fh, ref("frame_hidden_state")) <= 5e-5
        assert maxdiff(m.video_hidden(fh), ref("video_hidden")) <= 5e-5


def test_video_embedding_matches_reference(encoder):
    inputs = [encoder.preprocess(f) for f in ref("decoded_frames")]
    emb = encoder.embed_video_batch(inputs)
    assert emb.dtype == np.float32 and emb.shape == (2, 6, 24) == (2, *encoder.info.video_emb_shape)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
    assert maxdiff(emb, ref("video_emb")) <= 1e-4
    # one clip at a time gives the same as the batch
    single = np.concatenate([encoder.embed_video_batch([x]) for x in inputs])
    assert maxdiff(single, emb) <= 1e-6
    dist = np.array([[np.linalg.norm(a - b) for b in emb] for a in emb])
    assert maxdiff(dist, ref("video_dist")) <= 1e-4


def test_tokens_match_reference(encoder):
    ids, mask = encoder.tokenize(captions())
    np.testing.assert_array_equal(ids.numpy(), ref("token_ids"))
    np.testing.assert_array_equal(mask.numpy(), ref("attention_mask"))


def test_text_embedding_matches_reference(encoder):
    ids, mask = encoder.tokenize(captions())
    with torch.inference_mode():
        assert maxdiff(encoder.model.text_cls(ids, mask), ref("text_cls_hidden")) <= 1e-4
    emb = encoder.embed_text_batch(captions())
    assert emb.dtype == np.float32 and emb.shape == (3, 24)
    assert maxdiff(emb, ref("text_emb")) <= 1e-4
    one_by_one = np.concatenate([encoder.embed_text_batch([c]) for c in captions()])
    assert maxdiff(one_by_one, emb) <= 1e-6


def test_similarity_is_max_over_queries_like_reference(encoder):
    video = encoder.embed_video_batch([encoder.preprocess(f) for f in ref("decoded_frames")])
    text = encoder.embed_text_batch(captions())
    per_query = np.einsum("iqf,tf->itq", video, text)
    assert maxdiff(per_query, ref("sim_per_query")) <= 1e-4
    pairs_v = np.repeat(video, 3, axis=0)  # every (video, caption) pair, rows video-major
    pairs_t = np.tile(text, (2, 1))
    sim = encoder.similarity(pairs_v, pairs_t).reshape(2, 3)
    assert maxdiff(sim, ref("sim")) <= 1e-4
    # the arg-max query differs between pairs, so a mean or a fixed query would not pass
    assert len(set(ref("sim_per_query").argmax(-1).ravel().tolist())) > 1


def test_info_and_load_report(encoder):
    info = encoder.info
    assert info.name == "askvideos" and info.num_frames == 16 and info.frame_size == 56 and info.embed_dim == 24
    assert info.extra["video_qformer_layers"] == 2
    load = info.extra["load"]
    assert load["unexpected_keys"] == []
    # 2 position_ids buffers, temperature_parameter and the 7 tensors of the video Q-Former's MLM head
    assert load["keys_ignored"] == 10
    assert sum(load["keys_loaded"].values()) == len(encoder.model.state_dict())


# -- strict loading ----------------------------------------------------------------------------------------


def _full_state() -> dict:
    return torch.load(FIX / "askvideos_tiny.pth", weights_only=True)["model"]


def test_refuses_when_video_qformer_weights_are_missing(tmp_path):
    sd = {k: v for k, v in _full_state().items() if not k.startswith("video_Qformer.")}
    torch.save({"model": sd}, tmp_path / "no_video_qformer.pth")
    with pytest.raises(CurateError) as err:
        create(weights=str(tmp_path / "no_video_qformer.pth"))
    msg = str(err.value)
    assert "video Q-Former" in msg and "randomly initialised" in msg
    assert "video_Qformer.bert.embeddings.word_embeddings.weight" in msg
    assert "video_Qformer.bert.encoder.layer.0.attention.self.query.weight" in msg


def test_refuses_a_single_missing_tensor(tmp_path):
    sd = _full_state()
    del sd["vision_proj.bias"]
    torch.save({"model": sd}, tmp_path / "no_bias.pth")
    with pytest.raises(CurateError, match=r"vision_proj\.bias"):
        create(weights=str(tmp_path / "no_bias.pth"))


def test_split_files_without_eva_file_needs_download_and_fails_offline():
    with pytest.raises(WeightsUnavailable, match="eva_vit_g.pth"):
        create(weights=str(SPLIT["weights"]), qformer_weights=str(SPLIT["qformer_weights"]))


def test_blip2_file_cannot_override_the_projections(tmp_path):
    # the public BLIP-2 file carries its own vision_proj/text_proj (768->256); the reference never loads them
    blip = torch.load(SPLIT["qformer_weights"], weights_only=True)["model"]
    blip["vision_proj.weight"] = torch.zeros(24, 32)
    blip["Qformer.bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(64, 32)
    torch.save({"model": blip}, tmp_path / "blip2.pth")
    enc = create(weights=str(SPLIT["weights"]), eva_weights=str(SPLIT["eva_weights"]),
                 qformer_weights=str(tmp_path / "blip2.pth"))
    emb = enc.embed_video_batch([enc.preprocess(ref("decoded_frames")[0])])
    assert maxdiff(emb[0], ref("video_emb")[0]) <= 1e-4


def test_unexpected_keys_are_reported(tmp_path):
    sd = _full_state()
    sd["visual_encoder.blocks.0.gamma_1"] = torch.ones(48)
    torch.save({"model": sd}, tmp_path / "extra.pth")
    with pytest.warns(UserWarning, match="gamma_1"):
        enc = create(weights=str(tmp_path / "extra.pth"))
    assert enc.info.extra["load"]["unexpected_keys"] == ["visual_encoder.blocks.0.gamma_1"]


def test_head_counts_need_a_config_when_shapes_do_not_tell():
    # a 48-wide EVA fits neither the 88-d heads of ViT-g nor 64-d heads: the sizes file must say
    with pytest.raises(CurateError, match="config="):
        create(weights=str(FIX / "askvideos_tiny.pth"), config=None)


def test_random_weights_save_and_reload_round_trip(tmp_path):
    enc = create(weights="random")
    assert enc.info.weights == "random"
    frames = ref("decoded_frames")
    inputs = [enc.preprocess(frames[0]), enc.preprocess(frames[1][:10])]  # a 10-frame clip too
    video, text = enc.embed_video_batch(inputs), enc.embed_text_batch(captions())
    assert video.shape == (2, 6, 24) and text.shape == (3, 24)
    torch.save({"model": enc.model.state_dict()}, tmp_path / "tiny_random.pth")
    again = create(weights=str(tmp_path / "tiny_random.pth"))
    assert again.info.extra["load"]["unexpected_keys"] == []
    assert maxdiff(again.embed_video_batch(inputs), video) <= 1e-6
    assert maxdiff(again.embed_text_batch(captions()), text) <= 1e-6
    # a different random model is a different model
    assert maxdiff(video, ref("video_emb")) > 1e-2


def test_offline_hub_id_raises_weights_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsUnavailable, match="AskVideos-VideoCLIP-v0.2"):
        create(weights="AskYoutube/AskVideos-VideoCLIP-v0.2/askvideos_clip_v0.2.pth")


def test_tokenizer_without_vocabulary_is_refused(tmp_path):
    # transformers 5 builds a 5-token tokenizer from an empty folder instead of failing; that must not pass
    with pytest.raises(WeightsUnavailable, match="tokenizer"):
        create(weights=str(FIX / "askvideos_tiny.pth"), tokenizer=str(tmp_path))


def test_random_demo_without_tokenizer_files_uses_builtin_vocabulary(tmp_path):
    with pytest.warns(UserWarning, match="character-level"):
        enc = create(weights="random", tokenizer=str(tmp_path))
    assert "built-in" in enc.info.extra["tokenizer"]
    ids, _ = enc.tokenize(["Hello!"])
    assert enc.tokenizer.convert_ids_to_tokens(ids[0, :4].tolist()) == ["[CLS]", "h", "##e", "##l"]
    assert enc.embed_text_batch(["Hello!"]).shape == (1, 24)


def test_listing_plugins_does_not_import_torch():
    code = (
        "import sys; from curate.plugins import get_encoders; e = get_encoders()['askvideos']; "
        "assert {'weights', 'eva_weights', 'qformer_weights', 'tokenizer', 'frames'} <= set(e.options); "
        "assert 'torch' not in sys.modules, 'torch imported at listing time'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
