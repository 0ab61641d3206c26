"""Retrieval metrics on synthetic embeddings whose ranks are computed by hand, and `curate eval-retrieval`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import curate

from curate.errors import CurateError
from curate.query.retrieval import (
    evaluate,
    evaluate_arrays,
    group_captions,
    markdown_table,
    metrics,
    similarity,
    t2v_ranks,
    v2t_ranks,
)
from curate.store import (
    SCHEMAS,
    Root,
    embedding_schema,
    rows_to_table,
    write_bytes_atomic,
    write_table_atomic,
)

# S[i, j] = similarity of caption i and clip j. With text = identity, clip j's vector is column j of S.
S4 = np.array([[0.9, 0.1, 0.2, 0.3],
               [0.8, 0.5, 0.6, 0.1],
               [0.1, 0.2, 0.3, 0.4],
               [0.7, 0.6, 0.5, 0.2]], dtype=np.float32)


def from_matrix(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text, video) with text @ video.T == s exactly (text = identity rows)."""
    m = s.shape[0]
    return np.eye(m, dtype=np.float32), np.ascontiguousarray(s.T)


def clip4clip_compute_metrics(x: np.ndarray) -> dict:
    """CLIP4Clip's compute_metrics (metrics.py), the reference for one-to-one galleries with distinct scores."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    ind = np.where(sx - d == 0)[1]
    return {"R1": float(np.sum(ind == 0)) * 100 / len(ind), "R5": float(np.sum(ind < 5)) * 100 / len(ind),
            "R10": float(np.sum(ind < 10)) * 100 / len(ind), "MedianR": np.median(ind) + 1, "MeanR": np.mean(ind) + 1}


def test_hand_computed_ranks_one_caption_per_clip():
    text, video = from_matrix(S4)
    of = np.arange(4)
    # caption 0: 0.9 first; caption 1: 0.8, 0.6 ahead of 0.5; caption 2: 0.4 ahead; caption 3: all three ahead
    assert t2v_ranks(text, video, of).tolist() == [1, 3, 2, 4]
    # clip 0: column [.9 .8 .1 .7] -> 1; clip 1: .6 ahead of .5; clip 2: .6 .5 ahead of .3; clip 3: .3 .4 ahead of .2
    assert v2t_ranks(text, video, of).tolist() == [1, 2, 3, 3]
    t2v = metrics([1, 3, 2, 4])
    assert t2v == {"R1": 25.0, "R5": 100.0, "R10": 100.0, "MedianR": 2.5, "MeanR": 2.5, "queries": 4}
    v2t = metrics([1, 2, 3, 3])
    assert (v2t["R1"], v2t["MedianR"], v2t["MeanR"]) == (25.0, 2.5, 2.25)


def test_agrees_with_clip4clip_without_ties():
    rng = np.random.default_rng(1)
    s = rng.standard_normal((37, 37)).astype(np.float32)
    text, video = from_matrix(s)
    of = np.arange(37)
    ref_t2v, ref_v2t = clip4clip_compute_metrics(s), clip4clip_compute_metrics(s.T)
    ours_t2v, ours_v2t = metrics(t2v_ranks(text, video, of)), metrics(v2t_ranks(text, video, of))
    for key in ref_t2v:
        assert ours_t2v[key] == pytest.approx(ref_t2v[key]) and ours_v2t[key] == pytest.approx(ref_v2t[key])


def test_median_and_mean_rank_of_a_staircase():
    """Caption i has exactly i wrong clips ahead of its own: ranks 1..10, MedianR = MeanR = 5.5."""
    n = 10
    s = np.zeros((n, n), np.float32)
    for i in range(n):
        s[i, i] = 0.5
        for step in range(1, i + 1):
            s[i, (i + step) % n] = 1.0
    text, video = from_matrix(s)
    ranks = t2v_ranks(text, video, np.arange(n))
    assert ranks.tolist() == list(range(1, n + 1))
    m = metrics(ranks)
    assert (m["R1"], m["R5"], m["R10"], m["MedianR"], m["MeanR"]) == (10.0, 50.0, 100.0, 5.5, 5.5)
    for block in (1, 3, 7):  # block boundaries change nothing
        assert t2v_ranks(text, video, np.arange(n), block=block).tolist() == ranks.tolist()
        assert v2t_ranks(text, video, np.arange(n), block=block).tolist() == v2t_ranks(text, video, np.arange(n)).tolist()


def test_duplicate_captions_one_query_per_distinct_caption_best_clip_counts():
    captions = ["a dog", "a dog ", "a cat"]  # the first two are one caption (whitespace stripped)
    unique, of = group_captions(captions)
    assert unique == ["a dog", "a cat"] and of.tolist() == [0, 0, 1]
    s = np.array([[0.2, 0.7, 0.5],    # "a dog": its clips score .2 and .7; the best (.7) beats the cat clip (.5)
                  [0.6, 0.9, 0.4]],   # "a cat": .6 and .9 ahead of its clip's .4
                 np.float32)
    text, video = from_matrix(s)
    assert t2v_ranks(text, video, of).tolist() == [1, 3]
    # clip 0: caption scores [.2 .6] own .2 -> 2; clip 1: [.7 .9] own .7 -> 2; clip 2: [.5 .4] own .4 -> 2
    assert v2t_ranks(text, video, of).tolist() == [2, 2, 2]
    m = metrics(t2v_ranks(text, video, of))
    assert (m["R1"], m["MedianR"], m["MeanR"], m["queries"]) == (50.0, 2.0, 2.0, 2)


def test_evaluate_arrays_uses_one_text_embedding_per_distinct_caption():
    s = np.array([[0.2, 0.7, 0.5], [0.6, 0.9, 0.4]], np.float32)
    text, video = from_matrix(s)
    per_clip = text[[0, 0, 1]]
    r = evaluate_arrays(per_clip, video, ["a dog", "a dog", "a cat"])
    assert (r["clips"], r["captions"]) == (3, 2)
    assert r["t2v"]["queries"] == 2 and r["v2t"]["queries"] == 3
    assert r["t2v"]["MeanR"] == 2.0 and r["v2t"]["MeanR"] == 2.0


def test_score_ties_count_against_the_query():
    n = 5
    same = np.tile(np.array([[0.6, 0.8]], np.float32), (n, 1))  # a collapsed encoder: every score equal
    ranks = t2v_ranks(same, same, np.arange(n))
    assert ranks.tolist() == [5] * n and metrics(ranks)["R1"] == 0.0
    assert v2t_ranks(same, same, np.arange(n)).tolist() == [5] * n
    # one exact tie with a wrong clip: rank 2, not 1; a wrong clip lower by more than eps does not count
    s = np.array([[0.5, 0.5, 0.4999], [0.1, 0.9, 0.2], [0.0, 0.0, 1.0]], np.float32)
    text, video = from_matrix(s)
    assert t2v_ranks(text, video, np.arange(3)).tolist() == [2, 1, 1]


def test_max_over_queries_similarity_and_ranks():
    text = np.eye(3, dtype=np.float32)
    video = np.array([[[1.0, 0, 0], [0, 0.2, 0]],      # clip 0: caption 0 scores 1.0 via its first query
                      [[0.3, 0, 0], [0, 0.8, 0.1]],    # clip 1: caption 1 scores .8 via its second query
                      [[0.9, 0, 0.5], [0, 0, 0.6]]],   # clip 2: caption 0 .9, caption 2 max(.5, .6) = .6
                     np.float32)
    s = similarity(text, video)
    np.testing.assert_allclose(s, [[1.0, 0.3, 0.9], [0.2, 0.8, 0.0], [0.0, 0.1, 0.6]])
    assert t2v_ranks(text, video, np.arange(3)).tolist() == [1, 1, 1]
    # clip 2 ranks captions by [.9, 0, .6]: its own caption 2 comes second
    assert v2t_ranks(text, video, np.arange(3)).tolist() == [1, 1, 2]


def test_metrics_validation():
    with pytest.raises(ValueError):
        metrics([0, 1])
    assert metrics([])["queries"] == 0
    with pytest.raises(ValueError):
        t2v_ranks(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32)[:1], [1])  # caption 0 has no clip


# ----------------------------------------------------------------------------- on a dataset root
def write_synthetic_root(path, sets: dict[str, dict], captions: dict[str, str | None], published=None) -> Root:
    """A root with clips (captions) and embedding sets {name: {clip_id: (video, text | None)}} (no model)."""
    root = Root(path).ensure()
    ids = sorted(captions)
    root.clips.append(rows_to_table([{"clip_id": c, "source_id": "src", "clip_index": i, "start_s": float(i),
                                      "end_s": float(i + 1), "caption": captions[c], "status": "ok"}
                                     for i, c in enumerate(ids)], SCHEMAS["clips"]))
    for name, vecs in sets.items():
        rows = []
        shape = None
        for c, (v, t) in vecs.items():
            v = np.asarray(v, np.float32)
            shape = list(v.shape)
            rows.append({"clip_id": c, "video_emb": v.ravel().tolist(),
                         "text_emb": None if t is None else np.asarray(t, np.float32).tolist(), "status": "ok"})
        root.embeddings(name).append(rows_to_table(rows, embedding_schema()))
        write_bytes_atomic(json.dumps({"encoder": "synthetic", "options": {}, "model": name, "weights": "none",
                                       "video_emb_shape": shape,
                                       "similarity": "max_over_queries" if len(shape) == 2 else "cosine"}),
                           root.path / "embeddings" / name / "_meta.json")
    if published is not None:
        sub = root.subset_dir(published[0])
        write_table_atomic(pa.table({"clip_id": [c for c, _ in published[1]], "status": [s for _, s in published[1]]}),
                           sub / "annotations.parquet")
    return root


@pytest.fixture()
def eval_root(tmp_path):
    text, video = from_matrix(S4)
    captions = {f"c{i}": f"caption {i}" for i in range(4)}
    captions["c4"] = None  # no caption: not evaluated
    good = {f"c{i}": (video[i], text[i]) for i in range(4)}
    good["c4"] = (np.array([1, 1, 1, 1], np.float32) / 2, None)
    perfect = {f"c{i}": (text[i], text[i]) for i in range(4)}
    perfect.pop("c3")  # missing from this set: c3 leaves the common clips
    return write_synthetic_root(tmp_path / "ds", {"a": good, "b": perfect}, captions,
                                published=("pub", [("c0", "ok"), ("c1", "ok"), ("c2", "error")]))


def test_evaluate_on_a_root_compares_sets_on_common_clips(eval_root):
    ev = evaluate(eval_root, ["a"])
    (r,) = ev["results"]
    assert (r["clips"], r["captions"]) == (4, 4)
    assert r["t2v"]["MeanR"] == 2.5 and r["v2t"]["MeanR"] == 2.25  # the hand-computed S4 ranks
    ev = evaluate(eval_root)  # both sets: c3 is missing from "b", so both use c0..c2
    assert [x["encoder"] for x in ev["results"]] == ["a", "b"] and ev["clips"] == 3
    a, b = ev["results"]
    assert b["t2v"]["R1"] == 100.0 and b["v2t"]["MedianR"] == 1.0
    # "a" on c0..c2: S4[:3, :3] -> t2v ranks [1, 3, 1]; v2t ranks [1, 1, 2]
    assert a["t2v"]["MeanR"] == pytest.approx(5 / 3) and a["v2t"]["MeanR"] == pytest.approx(4 / 3)
    ev = evaluate(eval_root, ["a"], subset="pub")  # c2's cut failed: only c0, c1
    assert ev["clips"] == 2 and ev["results"][0]["t2v"]["R1"] == 50.0
    assert evaluate(eval_root, ["a"], max_clips=2)["clips"] == 2
    with pytest.raises(CurateError, match="No embedding set named 'nope'"):
        evaluate(eval_root, ["nope"])
    with pytest.raises(CurateError, match="not published"):
        evaluate(eval_root, ["a"], subset="other")
    table = markdown_table(evaluate(eval_root, ["a"]))
    assert table.splitlines()[0].startswith("| Model | clips | captions | t2v R1 | t2v R5 | t2v R10 | t2v MedianR")
    assert "| a | 4 | 4 | 25.00 | 100.00 | 100.00 | 2.5 | 2.5000 | 25.00 | 100.00 | 100.00 | 2.5 | 2.2500 |" in table


def test_eval_retrieval_cli(eval_root):
    p = curate("eval-retrieval", "--root", eval_root.path, "-e", "a", "--encoder", "b", "--json")
    ev = json.loads(p.stdout)
    assert ev["clips"] == 3 and [r["encoder"] for r in ev["results"]] == ["a", "b"]
    assert set(ev["results"][0]["t2v"]) >= {"R1", "R5", "R10", "MedianR", "MeanR"}
    p = curate("eval-retrieval", "--root", eval_root.path, "-e", "a", "--markdown")
    assert p.stdout.splitlines()[2].startswith("| a | 4 | 4 | 25.00 |")
    p = curate("eval-retrieval", "--root", eval_root.path)
    assert "t2v R1" in p.stdout and "v2t MeanR" in p.stdout and "100.00" in p.stdout
    p = curate("eval-retrieval", "--root", eval_root.path, "-e", "nope", check=False)
    assert p.returncode == 2 and "No embedding set named 'nope'" in p.stderr
