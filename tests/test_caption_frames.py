"""The `hf` captioner's frames reach the model, for every built-in family and input mode of the tiny test VLMs
(tests/tiny_vlm.py: Qwen2.5-VL and LLaVA-OneVision take images and video, LLaVA images only); a mode a family cannot take is refused
at load, never run as text-only captions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_vlm import build_tiny_llava, build_tiny_llava_onevision, build_tiny_qwen2_5_vl


@pytest.fixture(scope="module")
def vlms(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("vlms")
    return {"qwen2.5-vl": build_tiny_qwen2_5_vl(d / "qwen"), "llava": build_tiny_llava(d / "llava"),
            "llava-onevision": build_tiny_llava_onevision(d / "llava-ov")}


def _clip(rgb) -> np.ndarray:
    f = np.zeros((2, 48, 64, 3), np.uint8)
    f[...] = rgb
    f[:, :, :8] = 0  # an edge: not a constant image
    return f


@pytest.mark.parametrize(("family", "mode"), [("qwen2.5-vl", "images"), ("qwen2.5-vl", "video"), ("llava", "images"),
                                             ("llava-onevision", "images"), ("llava-onevision", "video")])
def test_the_frames_reach_the_vision_tower(vlms, family, mode):
    """The vision tower runs on each clip's own pixels: two visibly different clips give it different inputs,
    and the same clip the same input (so the difference is the frames, not chance)."""
    import torch

    from curate.stages.caption import load_captioner

    cap = load_captioner("hf", {"weights": str(vlms[family]), "frames": "2", "max_new_tokens": "3", "size": "64",
                                "input": mode}, device="cpu")
    inner = cap.model.model
    tower = getattr(inner, "visual", None) or inner.vision_tower
    seen: list[torch.Tensor] = []

    def record(mod, args, kwargs, out):
        x = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
        seen.append(x.detach().reshape(-1).clone())

    def tower_input(clip: np.ndarray) -> torch.Tensor:
        seen.clear()
        hook = tower.register_forward_hook(record, with_kwargs=True)
        try:
            assert len(cap.caption_batch([clip])) == 1
        finally:
            hook.remove()
        assert seen, f"{family} input={mode}: the vision tower never ran"
        return torch.cat(seen)

    red, blue = tower_input(_clip((255, 0, 0))), tower_input(_clip((0, 0, 255)))
    assert red.numel() > 0 and not torch.allclose(red, blue), "two different clips gave the model the same pixels"
    assert torch.equal(red, tower_input(_clip((255, 0, 0))))


def test_a_family_without_video_input_refuses_input_video(vlms):
    from curate.errors import CurateError
    from curate.stages.caption import load_captioner

    with pytest.raises(CurateError, match=r"LlavaForConditionalGeneration \(LlavaProcessor\) has no video input.*"
                                          r"-o input=images"):
        load_captioner("hf", {"weights": str(vlms["llava"]), "input": "video", "frames": "2"}, device="cpu")


def test_a_chat_template_that_drops_the_video_is_refused_at_load(vlms, tmp_path):
    """A processor with a video processor whose chat template drops the video part: the probe at load finds
    the prompt without the video's placeholder tokens (Qwen's processor says so itself; the placeholder count
    is the check for those that do not) and refuses, rather than captioning the prompt alone."""
    from curate.errors import CurateError
    from curate.stages.caption import load_captioner

    d = shutil.copytree(vlms["qwen2.5-vl"], tmp_path / "qwen-no-video")
    for name in ("chat_template.jinja", "chat_template.json", "processor_config.json"):
        p = d / name
        if p.exists() and name == "chat_template.jinja":
            p.write_text(p.read_text().replace("<|vision_start|><|video_pad|><|vision_end|>", ""))
        elif p.exists():
            cfg = json.loads(p.read_text())
            if isinstance(cfg.get("chat_template"), str):
                cfg["chat_template"] = cfg["chat_template"].replace("<|vision_start|><|video_pad|><|vision_end|>", "")
                p.write_text(json.dumps(cfg))
    with pytest.raises(CurateError, match=r"input=video.*Use -o input=images"):
        load_captioner("hf", {"weights": str(d), "input": "video", "frames": "2"}, device="cpu")
    ok = load_captioner("hf", {"weights": str(d), "input": "images", "frames": "2", "max_new_tokens": "2"},
                        device="cpu")
    assert len(ok.caption_batch([_clip((0, 255, 0))])) == 1


def test_the_removed_vllm_backend_says_what_to_use(vlms):
    from curate.errors import CurateError
    from curate.stages.caption import load_captioner

    with pytest.raises(CurateError, match="-c openai"):
        load_captioner("hf", {"weights": str(vlms["llava"]), "backend": "vllm"}, device="cpu")


def test_the_check_before_generate_refuses_a_prompt_or_batch_without_the_frames(vlms):
    import torch

    from curate.errors import CurateError
    from curate.stages.caption import load_captioner

    cap = load_captioner("hf", {"weights": str(vlms["qwen2.5-vl"]), "frames": "2", "size": "64"}, device="cpu")
    enc = dict(cap._encode([_clip((255, 0, 0))]))
    cap.check_frames(enc, [2])
    no_tokens = {**enc, "input_ids": torch.where(torch.isin(enc["input_ids"], torch.tensor([5, 6])), 0,
                                                 enc["input_ids"])}
    with pytest.raises(CurateError, match="0 visual placeholder tokens for 2 frames"):
        cap.check_frames(no_tokens, [2])
    with pytest.raises(CurateError, match="no pixel values"):
        cap.check_frames({k: v for k, v in enc.items() if not k.startswith("pixel_values")}, [2])
