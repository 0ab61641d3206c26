"""The one checkpoint reader (curate.weights.read_state_dict) and the hub-id rules every encoder shares."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from curate.errors import CurateError, WeightsUnavailable
from curate.weights import add_prefix, checkpoint_files, is_hub_repo, read_state_dict, strip_prefix


def _tensors(n: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    return {f"layer.{i}.weight": torch.randn(3, 2, generator=g) for i in range(n)}


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_wrappers_and_the_ddp_prefix_come_off(tmp_path):
    state = _tensors()
    p = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, "model": {"module." + k: v for k, v in state.items()}}, p)
    assert _same(read_state_dict(p), state)
    torch.save({"state_dict": {"model": state}}, p)
    assert _same(read_state_dict(p), state)


def test_safetensors_file_and_sharded_folders_read_the_same_tensors(tmp_path):
    from safetensors.torch import save_file

    state = _tensors(6)
    names = sorted(state)
    for kind, save, suffix in (("st", lambda sd, f: save_file(sd, str(f)), "safetensors"),
                               ("bin", lambda sd, f: torch.save(sd, f), "bin")):
        d = tmp_path / kind
        d.mkdir()
        shards = {f"part-1.{suffix}": names[:3], f"part-2.{suffix}": names[3:]}
        for shard, keys in shards.items():
            save({k: state[k] for k in keys}, d / shard)
        index = "model.safetensors.index.json" if kind == "st" else "pytorch_model.bin.index.json"
        (d / index).write_text(json.dumps({"weight_map": {k: s for s, keys in shards.items() for k in keys}}))
        assert checkpoint_files(d) == [d / f"part-1.{suffix}", d / f"part-2.{suffix}"]
        assert _same(read_state_dict(d), state)
    single = tmp_path / "one.safetensors"
    save_file(state, str(single))
    assert _same(read_state_dict(single), state)


def test_anything_but_a_plain_state_dict_is_refused_with_what_it_was_for(tmp_path):
    p = tmp_path / "mixed.pth"
    torch.save({"layer.0.weight": torch.zeros(2), "note": "hello"}, p)
    with pytest.raises(CurateError, match="not a plain state dict.*the test model"):
        read_state_dict(p, what="the test model")
    torch.save([torch.zeros(2)], p)
    with pytest.raises(CurateError, match="does not hold a state dict"):
        read_state_dict(p)
    broken = tmp_path / "cut.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CurateError, match="fetch it again"):
        read_state_dict(broken)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(WeightsUnavailable, match="weights=/path"):
        read_state_dict(empty)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_objects_are_refused_before_they_run(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    torch.save({"model": _Evil(marker)}, p)
    with pytest.raises(CurateError, match="weights_only=True"):
        read_state_dict(p)
    assert not marker.exists()


def test_prefix_helpers():
    state = {"clip.a": 1, "clip.b": 2, "head.c": 3}
    assert strip_prefix(state, "clip.") == {"a": 1, "b": 2, "head.c": 3}
    assert strip_prefix(state, "clip.", only=True) == {"a": 1, "b": 2}
    assert add_prefix({"blocks.0": 1, "visual_encoder.x": 2}, "visual_encoder.") == {
        "visual_encoder.blocks.0": 1, "visual_encoder.x": 2}


def test_hub_repo_ids_are_told_from_paths_and_urls(tmp_path, monkeypatch):
    assert is_hub_repo("OpenGVLab/ViCLIP-B-16-hf") and is_hub_repo("hf-hub:org/repo")
    assert not is_hub_repo("org/repo/file.pth") and not is_hub_repo("https://host/x")
    assert not is_hub_repo("./org/repo") and not is_hub_repo("random")
    (tmp_path / "org" / "repo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_repo("org/repo")  # an existing local folder wins
