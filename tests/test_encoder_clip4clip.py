"""clip4clip encoder: parity with transformers' own CLIP modules and processor, the CLIP4Clip repo
checkpoint mapping, 1-fps frame sampling, and strict/offline refusals. Tiny random models; no downloads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from curate.encoders.clip4clip import (
    Clip4ClipEncoder,
    FramePreprocessor,
    bundled_tokenizer,
    linspace_cut,
    one_fps_indices,
)
from curate.errors import CurateError, WeightsUnavailable

TOL = 1e-4
V_LAYERS, T_LAYERS = 2, 2
TEXTS = ["the dog and a cat", "a man is playing the guitar on stage in the dark",
         "x " * 120,  # longer than the 77-token context: truncated, EOT kept
         "in on the"]


def tiny_tokenizer():
    """A real byte-level CLIPTokenizer over a tiny vocab: 512 byte tokens, a few merges, BOS, EOT last."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"), ("o", "n</w>"),
              ("d", "o"), ("do", "g</w>"), ("c", "a"), ("ca", "t</w>")]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]  # EOT has the largest id, as in OpenAI's vocab
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges)


def tiny_config(vocab_size: int, eos: int):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": T_LAYERS,
                     "num_attention_heads": 1, "vocab_size": vocab_size, "max_position_embeddings": 77,
                     "projection_dim": 48, "bos_token_id": eos - 1, "eos_token_id": eos, "pad_token_id": eos,
                     "hidden_act": "quick_gelu"},
        vision_config={"hidden_size": 128, "intermediate_size": 200, "num_hidden_layers": V_LAYERS,
                       "num_attention_heads": 2, "image_size": 64, "patch_size": 16, "projection_dim": 48,
                       "hidden_act": "quick_gelu"},
        projection_dim=48)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """The Searchium layout: a CLIPModel (config.json + model.safetensors), processor config, tokenizer."""
    from transformers import CLIPImageProcessor, CLIPModel

    d = tmp_path_factory.mktemp("c4c_hf")
    tok = tiny_tokenizer()
    torch.manual_seed(1234)
    model = CLIPModel(tiny_config(len(tok) + 6, tok.eos_token_id)).eval()
    with torch.no_grad():  # make the LayerNorms and logit_scale non-trivial so a wrong mapping shows
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(2.5)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    # non-default resize (shortest edge 72, crop 64) to check that preprocessor_config.json is honoured
    CLIPImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64}).save_pretrained(d)
    return d


def hf_to_openai(sd: dict) -> dict:
    """The inverse of the documented OpenAI -> HF mapping, written out independently of the encoder."""
    o = {
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].t().contiguous(),
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t().contiguous(),
        "logit_scale": sd["logit_scale"],
    }
    towers = (("vision_model", "visual.transformer", V_LAYERS), ("text_model", "transformer", T_LAYERS))
    for hf_tower, oa_tower, n in towers:
        for i in range(n):
            h, a = f"{hf_tower}.encoder.layers.{i}.", f"{oa_tower}.resblocks.{i}."
            for kind in ("weight", "bias"):
                o[a + f"attn.in_proj_{kind}"] = torch.cat([sd[h + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
                o[a + f"attn.out_proj.{kind}"] = sd[h + f"self_attn.out_proj.{kind}"]
                o[a + f"ln_1.{kind}"] = sd[h + f"layer_norm1.{kind}"]
                o[a + f"ln_2.{kind}"] = sd[h + f"layer_norm2.{kind}"]
                o[a + f"mlp.c_fc.{kind}"] = sd[h + f"mlp.fc1.{kind}"]
                o[a + f"mlp.c_proj.{kind}"] = sd[h + f"mlp.fc2.{kind}"]
    return o


def hf_state(hf_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(hf_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def repo_ckpt(hf_dir, tmp_path_factory) -> Path:
    """The same weights as a CLIP4Clip repo checkpoint, with a couple of (meanP-unused) head tensors."""
    sd = hf_state(hf_dir)
    state = {"clip." + k: v.clone() for k, v in hf_to_openai(sd).items()}
    state["frame_position_embeddings.weight"] = torch.randn(77, 48)
    state["transformerClip.resblocks.0.ln_1.weight"] = torch.randn(48)
    state["similarity_dense.weight"] = torch.randn(1, 48)
    path = tmp_path_factory.mktemp("c4c_repo") / "pytorch_model.bin.2"
    torch.save(state, path)
    assert len(state) == len(sd) - 2 * (V_LAYERS + T_LAYERS) * 2 + 3  # q/k/v weight+bias -> one in_proj each
    return path


@pytest.fixture(scope="module")
def enc(hf_dir):
    return Clip4ClipEncoder(device="cpu", weights=str(hf_dir))


def clips(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # noise stresses the resampling; clips of different length and shape go in one batch
    return [rng.integers(0, 256, (3, 90, 120, 3), dtype=np.uint8),
            rng.integers(0, 256, (5, 150, 80, 3), dtype=np.uint8),
            rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)]


def reference_video(hf_dir: Path, frames: np.ndarray) -> np.ndarray:
    """transformers' own pipeline: CLIPImageProcessor -> CLIPVisionModelWithProjection -> meanP."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    proc = CLIPImageProcessor.from_pretrained(hf_dir)
    model = CLIPVisionModelWithProjection.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        px = proc(images=list(frames), return_tensors="pt")["pixel_values"]
        e = model(pixel_values=px).image_embeds
    e = e / e.norm(dim=-1, keepdim=True)
    v = e.mean(0)
    return (v / v.norm()).numpy()


def reference_text(hf_dir: Path, texts: list[str]) -> np.ndarray:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(hf_dir)
    model = CLIPTextModelWithProjection.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        t = tok(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        e = model(**t).text_embeds
    return (e / e.norm(dim=-1, keepdim=True)).numpy()


# -- (a) parity with transformers -----------------------------------------------------------------
def test_preprocess_matches_clip_image_processor_default():
    from transformers import CLIPImageProcessor

    proc, ours = CLIPImageProcessor(), FramePreprocessor()
    rng = np.random.default_rng(3)
    for h, w in [(240, 320), (360, 200), (224, 224), (100, 150), (480, 854)]:
        frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        ref = proc(images=list(frames), return_tensors="pt")["pixel_values"]
        got = ours(frames)
        assert got.shape == ref.shape == (2, 3, 224, 224)
        assert (got - ref).abs().max().item() < TOL, (h, w)


def test_preprocess_uses_preprocessor_config(enc, hf_dir):
    from transformers import CLIPImageProcessor

    assert enc.pre.resize_shortest == 72 and enc.pre.crop == (64, 64)
    frames = clips()[1]
    ref = CLIPImageProcessor.from_pretrained(hf_dir)(images=list(frames), return_tensors="pt")["pixel_values"]
    assert (enc.preprocess(frames) - ref).abs().max().item() < TOL


def test_video_parity_with_transformers_meanP(enc, hf_dir):
    cs = clips()
    got = enc.embed_video_batch([enc.preprocess(c) for c in cs])
    assert got.shape == (3, 48) and got.dtype == np.float32
    ref = np.stack([reference_video(hf_dir, c) for c in cs])
    assert np.abs(got - ref).max() < TOL
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    # batching clips together gives what one clip alone gives
    assert np.abs(enc.embed_video_batch([enc.preprocess(cs[1])])[0] - got[1]).max() < 1e-5


def test_text_parity_with_transformers(enc, hf_dir):
    got = enc.embed_text_batch(TEXTS)
    ref = reference_text(hf_dir, TEXTS)
    assert got.shape == (len(TEXTS), 48)
    assert np.abs(got - ref).max() < TOL
    # padding does not change an embedding (EOT pooling + causal mask)
    assert np.abs(enc.embed_text_batch(TEXTS[:1])[0] - got[0]).max() < 1e-5
    assert enc.embed_text_batch([]).shape == (0, 48)


def test_info_and_similarity(enc):
    info = enc.info
    assert info.name == "clip4clip" and info.video_emb_shape == (48,) and info.embed_dim == 48
    assert info.frame_size == 64 and info.num_frames == 64 and info.weights == str(enc.weights_desc)
    assert info.extra["layout"] == "hf"
    assert info.extra["logit_scale"] == pytest.approx(np.exp(2.5), rel=1e-5)
    assert "cosine" in Clip4ClipEncoder.score_range
    v = enc.embed_video_batch([enc.preprocess(clips()[0])])
    t = enc.embed_text_batch(["the dog"])
    assert enc.similarity(v, t)[0] == pytest.approx(float(v[0] @ t[0]), abs=1e-6)


# -- (b) CLIP4Clip repo checkpoint -> same model -----------------------------------------------------
def test_repo_checkpoint_equals_hf_layout(enc, repo_ckpt, hf_dir, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="curate.encoders.clip4clip"):
        rep = Clip4ClipEncoder(device="cpu", weights=str(repo_ckpt), tokenizer=str(hf_dir))
    assert "ignores 3 similarity-head tensors" in caplog.text
    assert rep.info.extra["layout"] == "clip4clip-repo" and rep.info.extra["ignored_head_keys"] == 3
    assert "seqTransf" in rep.info.extra["trained_head"]
    # the inferred config is the one the weights were made with
    vc, tc = rep.config.vision_config, rep.config.text_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads, vc.patch_size, vc.image_size,
            vc.intermediate_size) == (128, V_LAYERS, 2, 16, 64, 200)
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.max_position_embeddings,
            tc.vocab_size, tc.intermediate_size, tc.projection_dim) == (64, T_LAYERS, 1, 77,
                                                                         len(tiny_tokenizer()) + 6, 96, 48)
    # every tensor lands where the HF layout has it
    sd = hf_state(hf_dir)
    for k, v in rep.vision.state_dict().items():
        assert torch.equal(v, sd[k]), k
    for k, v in rep.text.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # repo checkpoints use the default CLIP preprocessing at the model's image size
    assert rep.pre.resize_shortest == 64 and rep.pre.crop == (64, 64)
    cs = clips(1)
    x_hf = [enc.pre.__class__.for_size(64)(c) for c in cs]
    a = enc.embed_video_batch(x_hf)
    b = rep.embed_video_batch([rep.preprocess(c) for c in cs])
    assert np.abs(a - b).max() < 1e-6
    assert np.abs(enc.embed_text_batch(TEXTS) - rep.embed_text_batch(TEXTS)).max() < 1e-6


def test_repo_checkpoint_with_module_prefix(repo_ckpt, hf_dir, tmp_path):
    state = torch.load(repo_ckpt, weights_only=True)
    p = tmp_path / "pytorch_model.bin.0"
    torch.save({"module." + k: v for k, v in state.items()}, p)
    rep = Clip4ClipEncoder(device="cpu", weights=str(p), tokenizer=str(hf_dir))
    assert rep.info.extra["ignored_head_keys"] == 3


# -- (c) frame indices -----------------------------------------------------------------------------
def test_one_fps_indices():
    assert one_fps_indices(80, 25.0) == [0, 25, 50, 75]  # 3.2 s at 25 fps
    assert one_fps_indices(100, 29.97) == [0, 29, 58, 87]  # fps truncated to 29
    assert one_fps_indices(87, 29.97) == [0, 29, 58]  # ceil(87/29) = 3 s
    assert one_fps_indices(88, 29.97) == [0, 29, 58, 87]
    assert one_fps_indices(10, 30) == [0]  # under a second: the first frame
    assert one_fps_indices(60, 30, rate=2) == [0, 15, 30, 45]
    assert one_fps_indices(5, 0.5) == [0, 1, 2, 3, 4]  # < 1 fps counts as 1
    with pytest.raises(ValueError):
        one_fps_indices(0, 25)
    with pytest.raises(ValueError):
        one_fps_indices(10, float("nan"))


def test_linspace_cut_and_encoder_sampling(hf_dir):
    idx = one_fps_indices(25 * 200, 25)  # 200 s
    assert len(idx) == 200
    assert linspace_cut(idx, 12) == [idx[i] for i in np.linspace(0, 199, 12, dtype=int)]
    assert linspace_cut(idx, 0) == idx and linspace_cut(idx[:5], 12) == idx[:5]
    e = Clip4ClipEncoder(device="cpu", weights=str(hf_dir), max_frames=8)
    got = e.frame_indices(25 * 200, 25.0)
    assert len(got) == 8 and got[0] == 0 and got[-1] == 199 * 25 and got == sorted(got)
    assert e.frame_indices(80, 25.0) == [0, 25, 50, 75]
    assert Clip4ClipEncoder(device="cpu", weights=str(hf_dir), max_frames=0).frame_indices(25 * 200, 25) == idx
    u = Clip4ClipEncoder(device="cpu", weights=str(hf_dir), sampling="uniform", frames="12")
    assert u.frame_indices(25 * 200, 25.0) == linspace_cut(idx, 12) and u.info.num_frames == 12
    assert u.frame_indices(80, 25.0) == [0, 25, 50, 75]  # short clip: fewer frames, as in CLIP4Clip


# -- (d) refusals ------------------------------------------------------------------------------------
def test_repo_checkpoint_missing_key_is_refused(repo_ckpt, hf_dir, tmp_path):
    state = torch.load(repo_ckpt, weights_only=True)
    del state["clip.visual.ln_post.weight"]
    p = tmp_path / "pytorch_model.bin.1"
    torch.save(state, p)
    with pytest.raises(CurateError, match=r"missing vision keys \[vision_model.post_layernorm.weight\]"):
        Clip4ClipEncoder(device="cpu", weights=str(p), tokenizer=str(hf_dir))


def test_repo_checkpoint_unknown_clip_key_is_refused(repo_ckpt, hf_dir, tmp_path):
    state = torch.load(repo_ckpt, weights_only=True)
    state["clip.visual.extra_adapter.weight"] = torch.zeros(3)
    p = tmp_path / "pytorch_model.bin.1"
    torch.save(state, p)
    with pytest.raises(CurateError, match="clip.visual.extra_adapter.weight"):
        Clip4ClipEncoder(device="cpu", weights=str(p), tokenizer=str(hf_dir))


def test_hf_layout_missing_key_is_refused(hf_dir, tmp_path):
    import shutil

    from safetensors.torch import save_file

    d = tmp_path / "broken"
    shutil.copytree(hf_dir, d)
    sd = hf_state(hf_dir)
    del sd["text_projection.weight"]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CurateError, match=r"missing text keys \[text_projection.weight\]"):
        Clip4ClipEncoder(device="cpu", weights=str(d))


def test_not_a_clip4clip_checkpoint(tmp_path, hf_dir):
    p = tmp_path / "x.bin"
    torch.save({"foo.weight": torch.zeros(2)}, p)
    with pytest.raises(CurateError, match="not a CLIP4Clip checkpoint"):
        Clip4ClipEncoder(device="cpu", weights=str(p), tokenizer=str(hf_dir))


def test_offline_hub_id_raises_weights_unavailable(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("CURATE_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(WeightsUnavailable, match="Searchium-ai/clip4clip-webvid150k"):
        Clip4ClipEncoder(device="cpu")
    with pytest.raises(WeightsUnavailable):
        Clip4ClipEncoder(device="cpu", weights="/nonexistent/clip4clip")


def test_offline_default_tokenizer_for_repo_checkpoint(monkeypatch, tmp_path, repo_ckpt):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("CURATE_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(WeightsUnavailable, match="openai/clip-vit-base-patch32"):
        Clip4ClipEncoder(device="cpu", weights=str(repo_ckpt))


@pytest.mark.parametrize("head", ["seqTransf", "seqLSTM", "tightTransf", "bogus"])
def test_other_heads_raise(head, hf_dir):
    with pytest.raises(CurateError, match="meanP"):
        Clip4ClipEncoder(device="cpu", weights=str(hf_dir), head=head)


def test_bad_options(hf_dir):
    with pytest.raises(CurateError, match="Unknown clip4clip option"):
        Clip4ClipEncoder(device="cpu", weights=str(hf_dir), num_frames=3)
    with pytest.raises(CurateError, match="sampling"):
        Clip4ClipEncoder(device="cpu", weights=str(hf_dir), sampling="middle")


# -- random weights, tokenizer, plugin -------------------------------------------------------------
def test_random_weights_with_config(hf_dir):
    e = Clip4ClipEncoder(device="cpu", weights="random", config=str(hf_dir / "config.json"), tokenizer=str(hf_dir))
    assert e.info.weights == "random" and e.info.embed_dim == 48
    v = e.embed_video_batch([e.preprocess(c) for c in clips()])
    assert v.shape == (3, 48) and np.isfinite(v).all()
    e2 = Clip4ClipEncoder(device="cpu", weights="random", config=str(hf_dir), tokenizer=str(hf_dir))
    assert np.array_equal(e2.embed_text_batch(TEXTS), e.embed_text_batch(TEXTS))  # seeded


def test_random_weights_tiny_config_rejects_big_tokenizer(hf_dir):
    with pytest.raises(CurateError, match="tokenizer"):
        Clip4ClipEncoder(device="cpu", weights="random", config=str(hf_dir))  # bundled 49408-token vocab


def test_bundled_tokenizer_matches_openai_bpe():
    import open_clip

    tok = bundled_tokenizer()
    ref = open_clip.get_tokenizer("ViT-B-32")
    texts = ["A man is playing guitar on stage!", "two dogs' running   in the PARK, 3 times", "naïve café"]
    got = tok(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    assert len(tok) == 49408
    assert torch.equal(got["input_ids"] * got["attention_mask"], ref(texts))


def test_plugin_registration_is_lazy():
    src = str(Path(__file__).resolve().parents[1] / "src")
    code = ("import sys; import curate.default_plugins.clip4clip as m; "
            "found = {}; m.register_encoders(register=lambda n, f, **kw: found.update({n: kw})); "
            "assert 'clip4clip' in found, found; opts = found['clip4clip']['options']; "
            "names = {'weights','tokenizer','fps','max_frames','sampling','frames','head','precision','config'}; "
            "assert names <= set(opts), opts; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; "
            "print('ok')")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    from curate.plugins import get_encoders

    comp = get_encoders()["clip4clip"]
    assert comp.plugin == "curate.default_plugins.clip4clip"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_close_to_fp32(hf_dir):
    cpu = Clip4ClipEncoder(device="cpu", weights=str(hf_dir))
    gpu = Clip4ClipEncoder(device="cuda", weights=str(hf_dir), precision="bf16")
    x = [cpu.preprocess(c) for c in clips()]
    assert np.abs(gpu.embed_video_batch(x) - cpu.embed_video_batch(x)).max() < 2e-2
    assert np.abs(gpu.embed_text_batch(TEXTS) - cpu.embed_text_batch(TEXTS)).max() < 2e-2
