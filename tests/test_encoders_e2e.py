"""Every shipped encoder runs end to end: embed -> score -> filter -> publish, with its card and shards.

Small checkpoints keep it fast: the parity fixtures' tiny ViCLIP and AskVideos checkpoints (original
formats, loaded through the public path) where they are available, a tiny CLIPConfig for clip4clip's
random towers, and the tiny open_clip model for clip.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import read_table

from curate.stages.embed import embed
from curate.stages.filter import filter_clips
from curate.stages.ingest import ingest
from curate.stages.publish import publish
from curate.stages.score import score
from curate.stages.split import split

PARITY = Path(os.environ.get("CURATE_PARITY_DIR", Path(__file__).parents[2] / "shared" / "fixtures" / "parity"))


def _options(name: str, tiny_clip: dict, tmp: Path) -> dict:
    if name == "clip":
        return tiny_clip
    if name == "clip4clip":
        from transformers import CLIPConfig

        cfg = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                      "num_attention_heads": 2, "max_position_embeddings": 77},
                         vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                        "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
                         projection_dim=24)
        cfg.save_pretrained(tmp / "c4c")
        return {"weights": "random", "config": str(tmp / "c4c"), "max_frames": "4"}
    d = PARITY / name
    if not d.is_dir():
        pytest.skip(f"parity fixtures for {name} not found at {d}")
    if name == "viclip":
        return {"weights": str(d / "viclip_tiny.pth"), "config": str(d / "config.json"), "image_size": "64"}
    return {"weights": str(d / "askvideos_tiny.pth"), "tokenizer": str(d / "tokenizer"), "config": str(d / "config.json"),
            "image_size": "56"}


@pytest.fixture(scope="module")
def split_root(tmp_path_factory, source_list):
    root = tmp_path_factory.mktemp("enc") / "ds"
    ingest(root, source_list)
    split(root, min_clip_s=0.5, max_clip_s=2.0)
    return root


@pytest.mark.parametrize("name", ["clip", "clip4clip", "viclip", "askvideos"])
def test_encoder_runs_through_every_stage(name, split_root, tiny_clip, tmp_path):
    opts = _options(name, tiny_clip, tmp_path)
    r = embed(split_root, name, options=opts, device="cpu", batch_size=3)
    clips = read_table(split_root / "clips")
    assert r.ok == r.total == int((clips.status == "ok").sum()), r.errors
    meta = json.loads((split_root / "embeddings" / name / "_meta.json").read_text())
    emb = read_table(split_root / "embeddings" / name)
    v = np.stack(emb.video_emb.to_numpy()).reshape(len(emb), *meta["video_emb_shape"])
    assert np.allclose(np.linalg.norm(v, axis=-1), 1, atol=1e-4)  # unit vectors (per query for stacks)
    score(split_root, encoder=name)
    s = filter_clips(split_root, f"s-{name}", encoder=name, top_percent=50).as_dict()
    p = publish(split_root, f"s-{name}", shard_size=10)
    assert p.ok == s["kept"] > 0
    shard = next((split_root / "subsets" / f"s-{name}" / "shards").glob("*.tar"))
    with tarfile.open(shard) as tar:
        npys = [m for m in tar.getnames() if m.endswith(".npy")]
        arr = np.load(io.BytesIO(tar.extractfile(npys[0]).read()))
    assert list(arr.shape) == meta["video_emb_shape"]
    card = (split_root / "subsets" / f"s-{name}" / "README.md").read_text()
    assert f"encoder: `{name}`" in card
