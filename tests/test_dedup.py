"""Dedup, exact and clustered (SemDeDup), on synthetic embedding sets with planted near-duplicates.

The sets are written into a root through the store's API (tests/dedup_data.py): a few thousand unit vectors
around blob centres (background cosine ~0.5 within a blob) and planted groups of 2-4 copies at a cosine of
0.96-0.995 to their group (so above 0.92 to each other)'s first vector. "A duplicate" below is a clip whose exact ``dup_sim`` is >= 0.9.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dedup_data import SET, make_vectors, unit, write_scores, write_set  # noqa: E402

from curate.errors import CurateError  # noqa: E402
from curate.scorers import dedup as dd  # noqa: E402
from curate.scorers import semdedup as sd  # noqa: E402
from curate.scorers.dedup import DedupScorer, result_table, table_stream  # noqa: E402
from curate.stages.dedup import dedup  # noqa: E402
from curate.store import SCHEMAS, rows_to_table  # noqa: E402

N, DIM = 4000, 64
DUP = 0.9
#: share of exact's duplicates the clustered method must find with the same dup_of and dup_sim
RECALL = 0.99
OPTS = {"method": "clustered", "by": "quality"}


def frame(t: pa.Table):
    return t.to_pandas().set_index("clip_id").sort_index()


@pytest.fixture(scope="module")
def data():
    vec, group = make_vectors(N, DIM, blobs=24, groups=250, seed=7)
    ids = [f"c{i:05d}" for i in range(len(vec))]
    quality = np.random.default_rng(8).random(len(vec))
    return ids, vec, group, quality


@pytest.fixture(scope="module")
def built(tmp_path_factory, data):
    ids, vec, group, quality = data
    root = write_set(tmp_path_factory.mktemp("dd") / "ds", ids, vec)
    write_scores(root, ids, quality)
    exact = frame(DedupScorer(method="exact", by="quality").compute(root, pa.array(ids)))
    clustered = frame(DedupScorer(**OPTS).compute(root, pa.array(ids)))
    return root, exact, clustered


def test_exact_is_the_brute_force_answer(built, data):
    root, exact, _ = built
    ids, vec, _, quality = data
    order = sorted(range(len(ids)), key=lambda i: (-quality[i], ids[i]))
    v = unit(vec[order].astype(np.float16).astype(np.float64))
    sims = v @ v.T
    for k in (1, 5, 100, 2000, len(ids) - 1):
        j = int(sims[k, :k].argmax())
        assert exact.dup_of[ids[order[k]]] == ids[order[j]]
        assert exact.dup_sim[ids[order[k]]] == pytest.approx(sims[k, j], abs=2e-3)
    assert exact.dup_sim[ids[order[0]]] == -1 and pd.isna(exact.dup_of[ids[order[0]]])


def test_clustered_finds_the_duplicates_exact_finds(built, data):
    _, exact, clustered = built
    ids, _, group, _ = data
    dups = exact.index[exact.dup_sim >= DUP]
    planted = sum(int((group == g).sum()) - 1 for g in range(group.max() + 1))
    assert len(dups) == planted  # the planted copies, and nothing else, are duplicates
    same = (clustered.dup_of[dups] == exact.dup_of[dups]) & (clustered.dup_sim[dups] == exact.dup_sim[dups])
    assert same.mean() >= RECALL, f"recall {same.mean():.4f}"
    # where both found the same better clip, the stored values are identical (not just close)
    both = clustered.dup_of.notna() & (clustered.dup_of == exact.dup_of)
    assert both.sum() > len(dups)
    assert (clustered.dup_sim[both] == exact.dup_sim[both]).all()
    # a clip's clustered dup_sim is never above exact's: it compares a subset of the same pairs
    assert (clustered.dup_sim <= exact.dup_sim + 1e-12).all()


def test_the_best_ranked_clip_of_each_planted_group_is_kept(built, data):
    _, _, clustered = built
    ids, _, group, quality = data
    kept = set(clustered.index[clustered.dup_sim < DUP])  # `curate filter --max-dup-sim 0.9`
    copies = extra = 0
    for g in range(group.max() + 1):
        members = [i for i in np.flatnonzero(group == g)]
        best = min(members, key=lambda i: (-quality[i], ids[i]))
        assert ids[best] in kept  # always: nothing ranks before it that is as similar
        extra += sum(ids[i] in kept for i in members if i != best)
        copies += len(members) - 1
    assert extra <= (1 - RECALL) * copies  # the other copies are dropped, up to the recall required


def test_the_boundary_rule_finds_a_pair_split_between_two_clusters(tmp_path):
    rng = np.random.default_rng(3)
    centres = unit(rng.standard_normal((2, DIM)))
    pts = unit(np.repeat(centres, 400, 0) + rng.standard_normal((800, DIM)) * 0.8 / np.sqrt(DIM))
    mid = unit(centres.sum(0))
    away = unit(centres[0] - centres[1])
    x, y = unit(mid + 0.03 * away), unit(mid - 0.03 * away)  # one on each side of the border
    vec = np.vstack([pts, x, y]).astype(np.float32)
    ids = [f"p{i:04d}" for i in range(800)] + ["x", "y"]
    root = write_set(tmp_path / "ds", ids, vec)
    write_scores(root, ids, np.r_[rng.random(800), 2.0, 1.0])  # x ranks first: y is its duplicate
    cos = float(x @ y)
    assert 0.99 < cos < 0.999

    def run(boundary):
        got = frame(DedupScorer(method="clustered", by="quality", k=2, boundary=boundary).compute(root, pa.array(ids)))
        plan = sd.load_plan(root, SET)
        split = plan.c1[plan.order.index("x").as_py()] != plan.c1[plan.order.index("y").as_py()]
        return got, split

    got, split = run("none")
    assert split and got.dup_of["y"] != "x"  # without the rule the pair is never compared
    got, split = run(0.05)
    assert split and got.dup_of["y"] == "x" and got.dup_sim["y"] == pytest.approx(cos, abs=2e-3)


def test_incremental_equals_from_scratch_with_the_same_centroids(tmp_path, data):
    ids, vec, _, quality = data
    cut = 3200
    root = write_set(tmp_path / "ds", ids[:cut], vec[:cut])
    write_scores(root, ids, quality)
    first = DedupScorer(**OPTS).compute(root, pa.array(ids[:cut]))
    root.scores.upsert(first)
    old = sd.load_plan(root, SET)
    write_set(root, ids[cut:], vec[cut:])  # new sources, then the next run
    calls = []
    real = sd.run_group

    def spy(plan, group, of, stream, kernel, **kw):
        calls.append(kw.get("new"))
        return real(plan, group, of, stream, kernel, **kw)

    sd.run_group = spy
    try:
        inc = frame(DedupScorer(**OPTS).compute(root, pa.array(ids)))
    finally:
        sd.run_group = real
    assert len(calls) == 1 and calls[0] is not None and calls[0].sum() == len(ids) - cut  # only new clips' pairs
    plan = sd.load_plan(root, SET)
    assert plan.meta["incremental_from"] == old.plan_id and np.array_equal(plan.centroids, old.centroids)
    assert plan.meta["table_version"] > old.meta["table_version"] and plan.meta["clips"] == len(ids)

    s = DedupScorer(**OPTS)  # from scratch: every pair of every cluster, with the stored centroids
    es = s.embedding_set(root)
    order = s.order(root, es, es.clip_ids())
    kernel = sd.Kernel("numpy")
    full = s.plan(root, es, order, kernel, keep_vectors=True, centroids=old.centroids)
    part = sd.run_group(full, 0, 1, full.vectors, kernel, dim=DIM)
    full.close()
    scratch = frame(result_table(order, *sd.merge_parts([part], len(order)), pa.array(ids)))
    assert inc.dup_of.fillna("").equals(scratch.dup_of.fillna(""))
    assert inc.dup_sim.equals(scratch.dup_sim)
    assert (inc.dup_of[ids[cut:]].notna()).any()  # new clips found duplicates among old ones


def test_sharded_equals_one_process_and_a_killed_group_redoes_only_itself(tmp_path, data):
    ids, vec, _, quality = data
    root = write_set(tmp_path / "ds", ids, vec)
    write_scores(root, ids, quality)
    plan = dedup(root, options=OPTS, plan=True, groups=4).as_dict()
    assert plan["method"] == "clustered" and len(plan["groups"]) == 4
    loaded = sd.load_plan(root, SET)
    es = DedupScorer(**OPTS).embedding_set(root)  # the same plan in one group, in this process
    part = sd.run_group(loaded, 0, 1, table_stream(es, loaded.order), sd.Kernel("numpy"), dim=DIM)
    one = frame(result_table(loaded.order, *sd.merge_parts([part], len(ids)), pa.array(ids)))
    for g in range(4):
        r = dedup(root, options=OPTS, shard=(g, 4)).as_dict()
        assert r["skipped"] == 0 and r["total"] > 0
    # group 2's worker died after writing: it alone is run again, the others are skipped
    root.rm(sd.part_rel(loaded, 2, 4))
    with pytest.raises(CurateError, match="groups 2 of 4"):
        dedup(root, options=OPTS, merge=True)
    assert [g["index"] for g in dedup(root, options=OPTS, plan=True, groups=4).as_dict()["groups"]] == [2]
    skipped = [dedup(root, options=OPTS, shard=(g, 4)).as_dict()["skipped"] for g in range(4)]
    assert skipped == [1, 1, 0, 1]
    assert sd.load_plan(root, SET).plan_id == loaded.plan_id  # the plan was kept, not retrained
    sharded = frame(DedupScorer(**OPTS).compute(root, pa.array(ids)))  # merges the 4 parts
    assert sharded.equals(one)
    assert dedup(root, options=OPTS, plan=True, groups=4).as_dict()["groups"] == []  # merged: nothing left


def scored_root(path, ids, vec, quality):
    """A root with the set, an ok ``clips`` row per clip and the ``quality`` ranking: what `curate dedup` reads."""
    root = write_set(path, ids, vec)
    root.clips.append(rows_to_table([{"clip_id": c, "source_id": "s", "status": "ok"} for c in ids],
                                    SCHEMAS["clips"]))
    write_scores(root, ids, quality)
    return root


def test_merge_goes_through_the_score_stage(tmp_path, data):
    ids, vec, _, quality = data
    ids, vec, quality = ids[:1500], vec[:1500], quality[:1500]
    root = scored_root(tmp_path / "ds", ids, vec, quality)
    dedup(root, options=OPTS, plan=True, groups=2)
    for g in range(2):
        dedup(root, options=OPTS, shard=(g, 2))
    res = dedup(root, options=OPTS, merge=True).as_dict()
    assert res["ok"] == len(ids)
    scores = frame(root.scores.read_arrow(columns=["clip_id", "dup_sim", "dup_of"]))
    assert scores.equals(frame(DedupScorer(**OPTS).compute(root, pa.array(ids))))
    assert json.loads(root.read_text(f"embeddings/{SET}/_dedup/plan.json"))["complete"] is True


def test_torch_on_the_cpu_gives_the_numpy_result(built, data):
    root, _, clustered = built
    ids = data[0]
    torch_cpu = frame(DedupScorer(**OPTS, device="cpu").compute(root, pa.array(ids)))
    assert torch_cpu.dup_of.fillna("").equals(clustered.dup_of.fillna(""))
    assert torch_cpu.dup_sim.equals(clustered.dup_sim)


def test_auto_is_exact_below_the_threshold_and_clustered_above(tmp_path, data, monkeypatch):
    ids, vec, _, _ = data
    root = write_set(tmp_path / "ds", ids[:300], vec[:300])
    DedupScorer(method="auto").compute(root, pa.array(ids[:300]))
    assert sd.load_plan(root, SET) is None  # exact: no plan
    monkeypatch.setattr(dd, "AUTO_EXACT_BELOW", 100)
    DedupScorer(method="auto").compute(root, pa.array(ids[:300]))
    assert sd.load_plan(root, SET).meta["k"] == sd.choose_k(300)


def test_clips_without_a_vector_get_no_value(tmp_path, data):
    ids, vec, _, _ = data
    root = write_set(tmp_path / "ds", ids[:200], vec[:200])
    got = frame(DedupScorer(method="clustered").compute(root, pa.array(ids[:200] + ["missing"])))
    assert np.isnan(got.dup_sim["missing"]) and pd.isna(got.dup_of["missing"])
    assert (got.dup_sim.drop("missing") >= -1).all()


def test_bad_options_are_refused():
    with pytest.raises(CurateError, match="method must be"):
        DedupScorer(method="fast")


def test_cli_plan_shards_merge(tmp_path, data):
    from typer.testing import CliRunner

    from curate.cli import app

    ids, vec, _, quality = data
    ids, vec, quality = ids[:800], vec[:800], quality[:800]
    root = scored_root(tmp_path / "ds", ids, vec, quality)

    def run(*args):
        r = CliRunner().invoke(app, ["dedup", "--root", str(root.path), "-o", "method=clustered", "-o", "by=quality",
                                     *args, "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout[r.stdout.index("{"):])

    assert len(run("--plan")["groups"]) == 1
    assert run("--shard", "0/2")["skipped"] == 0 and run("--shard", "1/2")["skipped"] == 0
    assert run("--shard", "1/2")["skipped"] == 1
    assert run("--merge")["ok"] == len(ids)
    scores = frame(root.scores.read_arrow(columns=["clip_id", "dup_sim", "dup_of"]))
    assert scores.dup_sim.notna().all() and (scores.dup_sim >= DUP).sum() > 0
