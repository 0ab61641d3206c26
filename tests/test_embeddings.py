"""curate.embeddings: one module owns an embedding set (metadata, vectors, similarity, score column)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import read_table

from curate import hookimpl
from curate.embeddings import EmbeddingSet, check_set_name, name_from_column, names_from_columns, score_column
from curate.encoders.base import Encoder, EncoderInfo, l2_normalize
from curate.errors import CurateError
from curate.store import Root, embedding_schema, rows_to_table, write_bytes_atomic
from curate.vectors import cosine_matrix

WORDS = ("test", "pattern", "fractal", "color", "bars", "gradient", "stripes", "then")


class MeanColour(Encoder):
    """No weights: a clip is the mean and spread of its frames' RGB; a caption the words of WORDS it uses."""

    name = "meancolour"

    def __init__(self, device: str | None = "cpu", **options) -> None:
        self.device = "cpu"
        self.options = options

    @property
    def info(self) -> EncoderInfo:
        return EncoderInfo(self.name, "mean-colour", "none", 8, 4, 0, (8,))

    def preprocess(self, frames):
        f = np.asarray(frames, np.float32) / 255.0
        return np.concatenate([f.mean(axis=(0, 1, 2)), f.std(axis=(0, 1, 2)), [f.max(), 0.1]]).astype(np.float32)

    def embed_video_batch(self, inputs):
        return l2_normalize(np.stack(inputs))

    def embed_text_batch(self, texts):
        out = np.full((len(texts), 8), 0.05, np.float32)
        for i, t in enumerate(texts):
            for j, w in enumerate(WORDS):
                out[i, j] += t.lower().split().count(w)
        return l2_normalize(out)


class NegCos(MeanColour):
    """The same vectors, scored by the negated cosine: the encoder's own similarity."""

    name = "negcos"

    def similarity(self, video, text):
        return -super().similarity(video, text)


class _Plugin:
    @hookimpl
    def register_encoders(self, register):
        register("meancolour", MeanColour, description="test: mean colour")
        register("negcos", NegCos, description="test: mean colour, negated cosine")


@pytest.fixture(scope="module")
def plugin():
    from curate.plugins import load_plugins, pm

    load_plugins()
    pm.register(_Plugin(), name="test-embeddings-plugin")
    yield
    pm.unregister(name="test-embeddings-plugin")


@pytest.fixture(scope="module")
def colour_root(tmp_path_factory, source_list, plugin):
    from curate.stages.embed import embed
    from curate.stages.ingest import ingest
    from curate.stages.score import score
    from curate.stages.split import split

    root = tmp_path_factory.mktemp("emb") / "ds"
    ingest(root, source_list, workers=2)
    split(root, min_clip_s=0.5, max_clip_s=2.0)
    for enc in ("meancolour", "negcos"):
        embed(root, enc, device="cpu", batch_size=4)
    score(root, scorers=["alignment"])
    return Root(root)


def stored(root: Root, name: str, with_text: bool = True):
    e = read_table(root.path / "embeddings" / name)
    e = e[(e.status == "ok") & (e.text_emb.notna() | (not with_text))].sort_values("clip_id")
    return (e.clip_id.tolist(), np.stack(e.video_emb.to_numpy()),
            np.stack(e.text_emb.to_numpy()) if with_text else None)


def test_an_encoder_that_overrides_similarity_changes_the_alignment_scores(colour_root):
    root = colour_root
    meta = {n: json.loads((root.path / "embeddings" / n / "_meta.json").read_text()) for n in ("meancolour", "negcos")}
    assert meta["negcos"]["encoder_similarity"] is True and meta["meancolour"]["encoder_similarity"] is False
    ids, video, text = stored(root, "negcos")
    assert len(ids) >= 4
    cos = np.einsum("bd,bd->b", video, text)
    assert cos.min() > 0.05  # positive cosines: a negated score cannot be one by accident
    scores = read_table(root.path / "scores").set_index("clip_id")
    np.testing.assert_allclose(scores.loc[ids, "negcos_sim"].to_numpy(), -cos, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores.loc[ids, "meancolour_sim"].to_numpy(), cos, rtol=0, atol=1e-6)


def test_an_encoder_that_overrides_similarity_changes_the_search_ranking(colour_root):
    from curate.query import search as S

    root = colour_root
    ids, video, _ = stored(root, "negcos", with_text=False)
    q = l2_normalize(np.linspace(1.0, 2.0, 8).astype(np.float32))
    cos = video @ q
    k = len(ids)
    plain = S.search(root, None, "meancolour", k=k, method="exact", query_vector=q)
    neg = S.search(root, None, "negcos", k=k, method="exact", query_vector=q)
    want_plain = [ids[i] for i in sorted(range(k), key=lambda i: (-cos[i], ids[i]))]
    want_neg = [ids[i] for i in sorted(range(k), key=lambda i: (cos[i], ids[i]))]
    assert [r["clip_id"] for r in plain["results"]] == want_plain
    assert [r["clip_id"] for r in neg["results"]] == want_neg != want_plain
    np.testing.assert_allclose([r["score"] for r in neg["results"]], -np.sort(cos), atol=1e-6)
    # an inner-product index cannot rank by the encoder's similarity: exact search, said so
    r = S.search(root, None, "negcos", k=3, method="index", query_vector=q)
    assert r["method"] == "exact" and any("own similarity" in w for w in r["warnings"])
    assert [h["clip_id"] for h in r["results"]] == want_neg[:3]
    with pytest.raises(CurateError, match="own similarity"):
        S.build_index(root, "negcos")


def test_retrieval_scores_with_the_sets_similarity(colour_root):
    es = EmbeddingSet(colour_root, "negcos")
    _, video, text = stored(colour_root, "negcos")
    np.testing.assert_allclose(es.score_matrix(text, video), -cosine_matrix(text, video), atol=1e-6)
    np.testing.assert_allclose(EmbeddingSet(colour_root, "meancolour").score_matrix(text, video),
                               cosine_matrix(text, video), atol=0)


def test_a_set_name_whose_score_column_is_a_scorers_is_refused(colour_root):
    from curate.stages.embed import embed

    with pytest.raises(CurateError, match="'dup_sim' is the dedup scorer's column"):
        check_set_name("dup")
    with pytest.raises(CurateError, match="cannot be named 'dup'"):
        EmbeddingSet(colour_root, "dup")
    with pytest.raises(CurateError, match="cannot be named 'dup'"):
        embed(colour_root, "meancolour", name="dup", device="cpu")
    assert not (colour_root.path / "embeddings" / "dup").exists()
    assert score_column("clip") == "clip_sim" and name_from_column("clip_sim") == "clip"
    assert name_from_column("dup_sim") is None and name_from_column("dup_of") is None
    assert names_from_columns(["clip_sim", "dup_sim", "duration_s", "clip_sim_error", "viclip_sim"]) == \
        ["clip", "viclip"]


def synthetic(path, n=60, shape=(6,), errors=3, parts=3) -> tuple[Root, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(3)
    root = Root(path).ensure()
    ids = [f"c{i:04d}" for i in range(n)]
    video = rng.standard_normal((n, *shape)).astype(np.float32)
    text = rng.standard_normal((n, shape[-1])).astype(np.float32)
    for a, b in zip(np.linspace(0, n, parts + 1).astype(int)[:-1], np.linspace(0, n, parts + 1).astype(int)[1:]):
        root.embeddings("syn").append(rows_to_table(
            [{"clip_id": ids[i], "video_emb": video[i].ravel().tolist(),
              "text_emb": text[i].tolist() if i % 7 else None, "status": "ok"} for i in range(a, b)],
            embedding_schema()))
    root.embeddings("syn").append(rows_to_table(
        [{"clip_id": f"bad{i}", "status": "error", "error": "decode: broken"} for i in range(errors)],
        embedding_schema()))
    write_bytes_atomic(json.dumps({"encoder": "synthetic", "options": {}, "video_emb_shape": list(shape)}),
                       root.path / "embeddings" / "syn" / "_meta.json")
    return root, video, text, ids


@pytest.mark.parametrize("keys_in_scan", [True, False], ids=["ids-in-scan", "many-ids-by-position"])
@pytest.mark.parametrize("shape", [(6,), (3, 4)])
def test_vectors_for_a_subset_of_clips_equal_a_direct_read(tmp_path, shape, keys_in_scan, monkeypatch):
    # many ids are matched by position after a scan of the ids, not sent to Lance as an isin filter (whose
    # plan costs ~1.5 KB of memory per id): both ways give the same rows, in table order
    import curate.store.tables

    monkeypatch.setattr(curate.store.tables, "KEYS_IN_SCAN_MAX", 10_000 if keys_in_scan else 0)
    root, video, text, ids = synthetic(tmp_path / "ds", shape=shape)
    want = ids[5:40:3] + ["bad1", "not-there"]
    direct = root.embeddings("syn").read_arrow(columns=["clip_id", "video_emb", "text_emb", "status"])
    direct = direct.filter(pa.compute.is_in(direct["clip_id"], value_set=pa.array(want))).to_pylist()
    es = EmbeddingSet(root, "syn")
    for columns, need in ((("video",), ["video_emb"]), (("video", "text"), ["video_emb", "text_emb"])):
        rows = [r for r in direct if r["status"] == "ok" and all(r[c] is not None for c in need)]
        got_ids, got_v, got_t = [], [], []
        for b in es.vectors(want, columns=columns, batch_rows=4):
            assert len(b.clip_ids) <= 4 and b.video.shape[1:] == shape
            got_ids += b.clip_ids.to_pylist()
            got_v.append(b.video)
            got_t.append(b.text)
        assert got_ids == [r["clip_id"] for r in rows]  # table order
        pos = {c: i for i, c in enumerate(got_ids)}
        v = np.concatenate(got_v)
        for r in rows:
            np.testing.assert_array_equal(v[pos[r["clip_id"]]], np.asarray(r["video_emb"], np.float32).reshape(shape))
        if "text" in columns:
            t = np.concatenate(got_t)
            for r in rows:
                np.testing.assert_array_equal(t[pos[r["clip_id"]]], np.asarray(r["text_emb"], np.float32))
        else:
            assert all(x is None for x in got_t)
    assert es.missing_reasons(want) == {"bad1": "clip not embedded: decode: broken",
                                        **{c: "clip has no caption" for c in want if c in ids and ids.index(c) % 7 == 0}}
    assert sorted(es.clip_ids(want).to_pylist()) == sorted(c for c in want if c in ids)
    assert list(es.vectors([])) == [] and len(es.clip_ids([])) == 0
    assert sum(len(b.clip_ids) for b in es.vectors()) == len(ids)  # every ok row, no error row


def test_meta_is_checked(tmp_path):
    root, *_ = synthetic(tmp_path / "ds")
    with pytest.raises(CurateError, match="No embedding set named 'nope'"):
        EmbeddingSet(root, "nope").meta  # noqa: B018
    write_bytes_atomic(json.dumps({"encoder": "synthetic", "video_emb_shape": [0]}),
                       root.path / "embeddings" / "syn" / "_meta.json")
    with pytest.raises(CurateError, match="no usable video_emb_shape"):
        EmbeddingSet(root, "syn").meta  # noqa: B018
    write_bytes_atomic(json.dumps({"encoder": "synthetic", "video_emb_shape": [5]}),
                       root.path / "embeddings" / "syn" / "_meta.json")
    with pytest.raises(CurateError, match="do not have the 5 values"):
        list(EmbeddingSet(root, "syn").vectors())
