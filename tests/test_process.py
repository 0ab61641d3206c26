"""`curate process` (split + embed in one decode pass) gives the clips and embeddings of the simple path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curate.embed import embed
from curate.ingest import ingest
from curate.process import process
from curate.split import split


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
    a = pd.read_parquet(simple / "clips").drop(columns=["updated_at"]).sort_values("clip_id").reset_index(drop=True)
    b = pd.read_parquet(fused / "clips").drop(columns=["updated_at"]).sort_values("clip_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert res.ok == 3 and res.extra["clips"] == len(b)


def test_fused_pass_gives_the_same_embeddings_as_embed_with_the_ffmpeg_decoder(roots):
    simple, fused, _ = roots
    a = pd.read_parquet(simple / "embeddings" / "clip").set_index("clip_id").sort_index()
    b = pd.read_parquet(fused / "embeddings" / "clip").set_index("clip_id").sort_index()
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
    assert res.total == 0 and res.extra["embedded_separately"] == len(pd.read_parquet(r / "clips"))
