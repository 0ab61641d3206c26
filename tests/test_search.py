"""Text-to-clip search: exact streaming top-k, the faiss index (same results), subsets, query stacks,
stale indexes, the faiss-missing fallback, and `curate search` on a real root embedded with a tiny model."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pyarrow as pa
import pytest
from conftest import curate, read_table

from curate.errors import CurateError
from curate.query import search as S
from curate.store import (
    SCHEMAS,
    Root,
    embedding_schema,
    rows_to_table,
    write_bytes_atomic,
    write_table_atomic,
)


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_root(path, vectors: np.ndarray, *, name="syn", ids=None, parts=1, published=None, errors=0) -> Root:
    """A root whose embeddings/<name> holds ``vectors`` ([N, D] or [N, Q, D]) as a real table, in ``parts`` parts."""
    root = Root(path).ensure()
    n = len(vectors)
    ids = ids or [f"clip{i:05d}" for i in range(n)]
    root.clips.append(rows_to_table([{"clip_id": c, "source_id": f"src{i % 3}", "clip_index": i, "start_s": float(i),
                                      "end_s": i + 1.5, "caption": f"caption {i}", "status": "ok"}
                                     for i, c in enumerate(ids)], SCHEMAS["clips"]))
    root.sources.append(rows_to_table([{"source_id": f"src{j}", "url": f"https://example.org/v{j}.mp4", "status": "ok"}
                                       for j in range(3)], SCHEMAS["sources"]))
    bounds = np.linspace(0, n, parts + 1).astype(int)
    for a, b in itertools.pairwise(bounds):
        root.embeddings(name).append(rows_to_table(
            [{"clip_id": ids[i], "video_emb": vectors[i].ravel().tolist(), "status": "ok"} for i in range(a, b)],
            embedding_schema()))
    if errors:  # rows of clips that failed to embed: never returned
        root.embeddings(name).append(rows_to_table(
            [{"clip_id": f"bad{i}", "status": "error", "error": "decode: broken"} for i in range(errors)],
            embedding_schema()))
    write_bytes_atomic(json.dumps({"encoder": "synthetic", "options": {}, "weights": "none",
                                   "video_emb_shape": list(vectors.shape[1:]),
                                   "similarity": "max_over_queries" if vectors.ndim == 3 else "cosine"}),
                       root.path / "embeddings" / name / "_meta.json")
    if published is not None:
        sub = root.subset_dir(published[0])
        write_table_atomic(pa.table({"clip_id": [c for c, _ in published[1]], "status": [s for _, s in published[1]]}),
                           sub / "annotations.parquet")
    return root


def brute_force(vectors, q, k, allowed=None, ids=None):
    """Ground truth: every score, sorted by score desc then clip id."""
    n = len(vectors)
    ids = ids or [f"clip{i:05d}" for i in range(n)]
    s = (vectors @ q).max(axis=1) if vectors.ndim == 3 else vectors @ q
    order = sorted((i for i in range(n) if allowed is None or ids[i] in allowed), key=lambda i: (-s[i], ids[i]))[:k]
    return [ids[i] for i in order], s[order]


@pytest.fixture(scope="module")
def vecs():
    rng = np.random.default_rng(7)
    return unit(rng.standard_normal((400, 32)))


def test_exact_running_topk_matches_brute_force_across_batches_and_parts(tmp_path, vecs):
    root = make_root(tmp_path / "ds", vecs, parts=3, errors=4)
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = unit(rng.standard_normal(32))
        want_ids, want = brute_force(vecs, q, 10)
        for batch_rows in (7, 64, None):
            ids, scores = S.exact_topk(root, "syn", q, 10, batch_rows=batch_rows)
            assert ids == want_ids
            np.testing.assert_allclose(scores, want, rtol=0, atol=1e-6)
    ids, _ = S.exact_topk(root, "syn", q, 1000)
    assert len(ids) == 400 and not any(i.startswith("bad") for i in ids)


def test_ties_are_broken_by_clip_id(tmp_path):
    v = unit(np.tile([[1.0, 0.0]], (6, 1)))
    ids = ["f", "b", "e", "a", "d", "c"]
    root = make_root(tmp_path / "ds", v, ids=ids, parts=2)
    got, _ = S.exact_topk(root, "syn", np.array([1.0, 0.0]), 3, batch_rows=2)
    assert got == ["a", "b", "c"]


def test_an_upserted_vector_replaces_the_old_one(tmp_path, vecs):
    root = make_root(tmp_path / "ds", vecs[:20])
    q = vecs[5]
    # clip00005 written again with another vector: one row per clip id, the newest
    root.embeddings("syn").upsert(rows_to_table([{"clip_id": "clip00005", "video_emb": (-q).tolist(), "status": "ok"}],
                                                embedding_schema()))
    ids, scores = S.exact_topk(root, "syn", q, 20)
    assert ids.count("clip00005") == 1 and ids[-1] == "clip00005" and scores[-1] == pytest.approx(-1.0)


def needs_faiss():
    return pytest.mark.skipif(not S.faiss_available(), reason="faiss-cpu is not installed")


@needs_faiss()
def test_index_and_exact_paths_return_identical_results(tmp_path, vecs):
    ids_all = [f"clip{i:05d}" for i in range(400)]
    published = ("half", [(c, "ok") for c in ids_all[::2]] + [(ids_all[1], "error")])
    root = make_root(tmp_path / "ds", vecs, parts=2, published=published, errors=3)
    meta = S.build_index(root, "syn")
    assert meta["rows"] == 400 and meta["vectors"] == 400 and meta["nlist"] > 1
    assert (root.path / "index" / "syn" / "meta.json").exists()
    rng = np.random.default_rng(3)
    for _ in range(5):
        q = unit(rng.standard_normal(32))
        for subset in (None, "half"):
            a = S.search(root, None, "syn", k=10, subset=subset, method="exact", query_vector=q)
            b = S.search(root, None, "syn", k=10, subset=subset, method="index", query_vector=q)
            assert (a["method"], b["method"]) == ("exact", "index")
            assert [h["clip_id"] for h in a["results"]] == [h["clip_id"] for h in b["results"]]
            np.testing.assert_allclose([h["score"] for h in a["results"]], [h["score"] for h in b["results"]],
                                       atol=1e-5)
            allowed = set(ids_all[::2]) if subset else None
            assert [h["clip_id"] for h in a["results"]] == brute_force(vecs, q, 10, allowed)[0]
    # nprobe=1 visits one list; it keeps doubling until k clips are found
    ids, _ = S.index_topk(S.load_index(root, "syn"), q, 10, nprobe=1)
    assert len(ids) == 10


@needs_faiss()
def test_auto_uses_the_index_above_the_threshold_and_rebuilds_a_stale_one(tmp_path, vecs):
    root = make_root(tmp_path / "ds", vecs[:100])
    q = vecs[3]
    r = S.search(root, None, "syn", k=3, query_vector=q, index_threshold=1000)
    assert r["method"] == "exact" and not (root.path / "index").exists()
    messages = []
    r = S.search(root, None, "syn", k=3, query_vector=q, index_threshold=50, log=messages.append)
    assert r["method"] == "index" and r["results"][0]["clip_id"] == "clip00003"
    assert any("building the index" in m for m in messages)
    first = S.index_status(root, "syn")
    assert first["fresh"]
    # new embeddings arrive: the fingerprint changes, the index is stale and gets rebuilt
    new = unit(q + 0.01)
    root.embeddings("syn").append(rows_to_table([{"clip_id": "zz-new", "video_emb": new.tolist(), "status": "ok"}],
                                                embedding_schema()))
    assert not S.index_status(root, "syn")["fresh"] and S.load_index(root, "syn") is None
    messages.clear()
    r = S.search(root, None, "syn", k=3, query_vector=new, method="index", log=messages.append)
    assert r["results"][0]["clip_id"] == "zz-new" and any("rebuilding" in m for m in messages)
    st = S.index_status(root, "syn")
    assert st["fresh"] and st["meta"]["rows"] == 101 and st["meta"]["files"] != first["meta"]["files"]
    # the files of the old build are gone
    names = sorted(p.name for p in (root.path / "index" / "syn").iterdir())
    assert names == sorted(["meta.json", *st["meta"]["files"].values()])


def test_index_requested_without_faiss_falls_back_to_exact(tmp_path, vecs, monkeypatch):
    root = make_root(tmp_path / "ds", vecs[:50])
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    assert not S.faiss_available()
    r = S.search(root, None, "syn", k=5, method="index", query_vector=vecs[7])
    assert r["method"] == "exact" and r["results"][0]["clip_id"] == "clip00007"
    assert any("faiss is not installed" in w and "pip install faiss-cpu" in w for w in r["warnings"])
    with pytest.raises(CurateError, match="faiss"):
        S.build_index(root, "syn")


@pytest.mark.parametrize("method", ["exact", "index"])
def test_max_over_queries_for_query_stacks(tmp_path, method):
    if method == "index" and not S.faiss_available():
        pytest.skip("faiss-cpu is not installed")
    e = np.eye(4, dtype=np.float32)
    stacks = np.stack([
        np.stack([e[1], e[0]]),                   # A: second query is the query itself -> 1.0
        np.stack([unit([0.6, 0.8, 0, 0])] * 2),   # B: 0.6 from both queries
        np.stack([unit([0.7, 0, 0.71, 0]), -e[0]]),  # C: max(0.70, -1) = 0.70; its mean (-0.15) would rank last
        np.stack([e[2], e[3]]),                   # D: 0
    ])
    root = make_root(tmp_path / "ds", stacks, ids=["A", "B", "C", "D"])
    r = S.search(root, None, "syn", k=4, method=method, query_vector=e[0])
    assert [h["clip_id"] for h in r["results"]] == ["A", "C", "B", "D"]
    np.testing.assert_allclose([h["score"] for h in r["results"]], [1.0, 0.7 / np.hypot(0.7, 0.71), 0.6, 0.0],
                               atol=1e-6)


def test_subset_restriction_and_errors(tmp_path, vecs):
    ids_all = [f"clip{i:05d}" for i in range(60)]
    keep = {"clip00010", "clip00020", "clip00030"}
    root = make_root(tmp_path / "ds", vecs[:60], published=("pub", [(c, "ok") for c in sorted(keep)]
                                                            + [("clip00011", "error")]))
    q = vecs[11]  # its own clip failed to publish: not returned
    r = S.search(root, None, "syn", k=10, subset="pub", query_vector=q)
    assert {h["clip_id"] for h in r["results"]} == keep and r["candidates"] == 3
    assert [h["clip_id"] for h in r["results"]] == brute_force(vecs[:60], q, 10, keep, ids_all)[0]
    h = r["results"][0]
    assert h["url"].startswith("https://example.org/") and h["end_s"] - h["start_s"] == 1.5
    with pytest.raises(CurateError, match="not published"):
        S.search(root, None, "syn", subset="nope", query_vector=q)
    with pytest.raises(CurateError, match="No embedding set named 'other'"):
        S.search(root, None, "other", query_vector=q)
    with pytest.raises(CurateError, match="k must be"):
        S.search(root, None, "syn", k=0, query_vector=q)
    with pytest.raises(CurateError, match="query is empty"):
        S.search_subset(root, "pub", "  ", "syn", 5)


# ----------------------------------------------------------------------------- a real root, the CLI
@pytest.fixture(scope="module")
def real_root(tmp_path_factory, source_list, tiny_clip):
    from curate.stages.embed import embed
    from curate.stages.filter import filter_clips
    from curate.stages.ingest import ingest
    from curate.stages.publish import publish
    from curate.stages.score import score
    from curate.stages.split import split

    root = tmp_path_factory.mktemp("search") / "ds"
    ingest(root, source_list, workers=2)
    split(root, min_clip_s=0.5, max_clip_s=2.0)
    embed(root, "clip", options=tiny_clip, device="cpu", batch_size=4)
    score(root)
    filter_clips(root, "short", max_duration=1.9)
    publish(root, "short", shard_size=10, workers=2)
    return Root(root)


def expected(root: Root, tiny_clip, query, k, allowed=None):
    """Top-k computed here: the query embedded in this process with the recorded options, every stored vector."""

    from curate.encoders import load_encoder

    q = load_encoder("clip", tiny_clip, "cpu").embed_texts([query])[0]
    e = read_table(root.path / "embeddings" / "clip")
    e = e[e.status == "ok"]
    if allowed is not None:
        e = e[e.clip_id.isin(allowed)]
    s = np.stack(e.video_emb.to_numpy()) @ q
    order = sorted(range(len(e)), key=lambda i: (-s[i], e.clip_id.iloc[i]))[:k]
    return [e.clip_id.iloc[i] for i in order], s[order]


def test_cli_search_json_on_a_real_root(real_root, tiny_clip):
    query = "a zoom into a glowing mandelbrot fractal"
    p = curate("search", query, "--root", real_root.path, "--encoder", "clip", "-k", 4, "--device", "cpu", "--json")
    r = json.loads(p.stdout)
    assert r["query"] == query and r["embeddings"] == "clip" and r["encoder"] == "clip" and r["method"] == "exact"
    assert r["k"] == 4 and len(r["results"]) == 4 and r["candidates"] > 4
    for i, h in enumerate(r["results"], start=1):
        assert set(h) == {"rank", "clip_id", "score", "source_id", "url", "start_s", "end_s", "caption"}
        assert h["rank"] == i and h["url"].endswith(".mp4") and h["end_s"] > h["start_s"]
    want_ids, want_scores = expected(real_root, tiny_clip, query, 4)
    assert [h["clip_id"] for h in r["results"]] == want_ids
    np.testing.assert_allclose([h["score"] for h in r["results"]], want_scores, atol=1e-5)
    if S.faiss_available():
        p = curate("search", query, "--root", real_root.path, "-e", "clip", "-k", 4, "--index", "--json")
        ri = json.loads(p.stdout)
        assert ri["method"] == "index" and [h["clip_id"] for h in ri["results"]] == want_ids
        assert (real_root.path / "index" / "clip" / "meta.json").exists()


def test_cli_search_subset_table_and_contact_sheet(real_root, tiny_clip, tmp_path):
    from PIL import Image

    published = read_table(real_root.path / "subsets" / "short" / "annotations.parquet")
    allowed = set(published[published.status == "ok"].clip_id)
    all_clips = set(read_table(real_root.path / "clips").clip_id)
    assert 0 < len(allowed) < len(all_clips)
    query = "television color bars"
    sheet = tmp_path / "sheet.png"
    p = curate("search", query, "--root", real_root.path, "-e", "clip", "--subset", "short", "-k", 50, "--exact",
               "--json", "--contact-sheet", sheet)
    r = json.loads(p.stdout)
    got = [h["clip_id"] for h in r["results"]]
    assert set(got) == allowed and got == expected(real_root, tiny_clip, query, 50, allowed)[0]
    img = Image.open(sheet)
    n = len(got)
    assert img.format == "PNG" and img.size == (min(5, n) * 256, -(-n // 5) * (144 + 40))
    # the first cell shows a frame (a 4:3 frame fills 192 of its 256 columns), not the background
    cell = np.asarray(img.convert("RGB"))[:144, :256].astype(int)
    assert (np.abs(cell - 24).sum(axis=2) > 0).mean() > 0.6
    p = curate("search", query, "--root", real_root.path, "-e", "clip", "--subset", "short", "-k", 2)
    assert "rank" in p.stdout and "score" in p.stdout and got[0] in p.stdout
    p = curate("search", query, "--root", real_root.path, "-e", "clip", "--index", "--exact", check=False)
    assert p.returncode == 2 and "--exact excludes --index" in p.stderr
    p = curate("search", query, "--root", real_root.path, "-e", "nope", check=False)
    assert p.returncode == 2 and "No embedding set named 'nope'" in p.stderr and "Traceback" not in p.stderr


def test_search_subset_for_the_airflow_page(real_root, tiny_clip):

    published = read_table(real_root.path / "subsets" / "short" / "annotations.parquet")
    allowed = set(published[published.status == "ok"].clip_id)
    hits = S.search_subset(str(real_root.path), "short", "a colorful test pattern", "clip", 3)
    assert len(hits) == min(3, len(allowed)) and all(h["clip_id"] in allowed for h in hits)
    assert [h["clip_id"] for h in hits] == expected(real_root, tiny_clip, "a colorful test pattern", 3, allowed)[0]
    json.dumps(hits)  # JSON-ready
    with pytest.raises(CurateError, match="k must be"):
        S.search_subset(real_root, "short", "x", "clip", "many")


def test_eval_retrieval_on_the_real_root(real_root):
    p = curate("eval-retrieval", "--root", real_root.path, "--json")
    ev = json.loads(p.stdout)
    (r,) = ev["results"]
    # clips of one source share its caption; the long_shot source has none
    assert r["encoder"] == "clip" and r["captions"] == 2 and r["clips"] > r["captions"]
    assert r["t2v"]["queries"] == 2 and r["v2t"]["queries"] == r["clips"]
    assert 1 <= r["t2v"]["MedianR"] <= r["clips"] and 1 <= r["v2t"]["MeanR"] <= 2
