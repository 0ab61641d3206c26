"""Resident workers (curate.workers): one model load per worker, decode overlapped with the forward, batches
claimed by leases on the root (local and in a bucket), a killed worker's batch finished by another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from conftest import curate

from curate.store import Root
from curate.workers import Board, StageWork, run_worker, stage_summaries


# ----------------------------------------------------------------------------- overlap (fakes)
class SlowModel:
    """A fake model whose forward sleeps; it records when each forward ran."""

    def __init__(self, forward_s: float) -> None:
        self.forward_s = forward_s
        self.spans: dict[int, tuple[float, float]] = {}

    def forward(self, k: int) -> int:
        t = time.perf_counter()
        time.sleep(self.forward_s)
        self.spans[k] = (t, time.perf_counter())
        return k


class SlowWork(StageWork):
    """A stage whose batch is one slow decode (CPU, its own thread, as the stages' read-ahead threads) then
    one slow forward of the resident model."""

    stage = "fake"

    def __init__(self, decode_s: float, forward_s: float) -> None:
        super().__init__()
        self.decode_s, self.forward_s = decode_s, forward_s
        self.decodes: dict[int, tuple[float, float]] = {}
        self.model: SlowModel | None = None

    def setup(self) -> None:
        self.model = self.clock.wrap(SlowModel(self.forward_s), ("forward",))
        self.loads += 1

    def run(self, root, source_ids):
        k = int(source_ids[0][1:])
        out: list = []

        def decode():
            t = time.perf_counter()
            time.sleep(self.decode_s)
            self.decodes[k] = (t, time.perf_counter())
            out.append(k)

        th = threading.Thread(target=decode)
        th.start()
        th.join()
        self.model.forward(out[0])
        return {"stage": "fake", "total": 1, "ok": 1, "error": 0, "skipped": 0}


@pytest.mark.parametrize("prefetch", [1, 0])
def test_decode_of_the_next_batch_overlaps_the_forward_of_this_one(tmp_path, prefetch):
    n, d, f = 8, 0.15, 0.15
    work = SlowWork(d, f)
    st = run_worker(tmp_path / "root", work, board="fake", prefetch=prefetch, plan=[[f"s{k}"] for k in range(n)])
    assert sorted(st["batches_done"]) == list(range(n)) and st["model_loads"] == 1 and work.loads == 1
    fwd, dec = work.model.spans, work.decodes
    # the worker's busy time is the fake model's own accounting of its forwards
    own = sum(b - a for a, b in fwd.values())
    assert st["forward_s"] == pytest.approx(own, rel=0.05)
    assert st["busy"] == pytest.approx(st["forward_s"] / st["wall_s"], rel=1e-3)
    spent = sum(b - a for a, b in dec.values()) + own  # what one batch after the other costs
    span = max(b for _, b in fwd.values()) - min(a for a, _ in dec.values())
    overlapped = [k for k in range(n - 1) if dec[k + 1][0] < fwd[k][1]]
    if prefetch:  # decode of batch k+1 starts before the forward of batch k ends: wall ~ n * max(d, f)
        assert len(overlapped) >= n // 2, (overlapped, dec, fwd)
        assert span < 0.8 * spent, (span, spent)
    else:  # one batch at a time: no overlap, wall ~ n * (d + f)
        assert not overlapped
        assert span >= 0.95 * spent
    # forwards never overlap each other (one GPU stream)
    spans = sorted(fwd.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    board = Board(tmp_path / "root", "fake")
    assert board.finished("fake") and not Root(tmp_path / "root").ls(".locks", dirs=False)
    summary = stage_summaries(tmp_path / "root")["fake/fake"]
    assert summary["done"] == n and summary["running"] == 0 and summary["model_loads"] == 1


def test_a_batch_whose_upstream_is_not_done_waits_and_a_failed_one_is_recorded(tmp_path):
    """Readiness is per batch: the worker takes batch 1 as soon as its upstream is done, while batch 0's
    upstream is still running; it ends once the upstream stage is finished."""
    root = Root(tmp_path / "root").ensure()
    b = Board(root, "run")
    b.add_batches([["s0"], ["s1"], ["s2"]], seal=True)

    class Up(StageWork):
        stage, upstream = "down", "up"

        def run(self, root, source_ids):
            if source_ids == ["s2"]:
                raise RuntimeError("boom")
            return {"total": 1, "ok": 1, "error": 0, "skipped": 0}

    b.mark("up", 1, "done")
    b.mark("up", 2, "done")
    done = threading.Event()
    out: dict = {}

    def go():
        out.update(run_worker(root, Up(), board="run", prefetch=0))
        done.set()

    th = threading.Thread(target=go)
    th.start()
    for _ in range(200):
        if b.marked("down", "done") == {1} and b.marked("down", "failed") == {2}:
            break
        time.sleep(0.05)
    assert b.marked("down", "done") == {1} and not done.is_set()  # batch 0 waits for its upstream
    b.mark("up", 0, "done")
    b.finish("up")
    th.join(60)
    assert done.is_set() and sorted(out["batches_done"]) == [0, 1] and out["batches_failed"] == [2]
    assert "boom" in b.marks("down", "failed")[2]["error"] and b.finished("down")


# ----------------------------------------------------------------------------- real workers from the CLI
def _opts(options: dict) -> list[str]:
    return [a for k, v in options.items() for a in ("-o", f"{k}={v}")]


PROCESS = ["--min-clip-s", "0.5", "--max-clip-s", "2", "--device", "cpu", "--batch-size", "3"]


def _workers(root, tiny_clip, n: int, env: dict | None = None, check: bool = True) -> list[subprocess.Popen]:
    args = [sys.executable, "-m", "curate.cli", "process", "--root", str(root), *_opts(tiny_clip), *PROCESS,
            "--worker", "--batch-sources", "1", "--json"]
    e = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e) for _ in range(n)]


def _results(procs) -> list[dict]:
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, f"{o}\n{e}"
    return [json.loads(o) for o, _ in outs]


def _table(root, name: str) -> pa.Table:
    """Every stored row (no dedup by key), read with Lance (locally or from the bucket)."""
    import lance

    from curate.store.storage import lance_storage_options

    url = Root(root).url(name)
    return lance.dataset(url, storage_options=lance_storage_options(url)).to_table()


def _same(root, ref) -> None:
    for name, key in [("clips", "clip_id"), ("embeddings/clip", "clip_id"), ("clip_transitions", "transition_id")]:
        if name == "clip_transitions" and not Root(ref).exists(name):
            continue
        got, want = _table(root, name), _table(ref, name)
        assert got.num_rows == len(set(got[key].to_pylist())), f"{name}: a row stored twice"
        g = sorted(got.drop_columns(["updated_at"]).to_pylist(), key=lambda r: r[key])
        w = sorted(want.drop_columns(["updated_at"]).to_pylist(), key=lambda r: r[key])
        assert [r[key] for r in g] == [r[key] for r in w], name
        for a, b in zip(g, w):
            for k in a:
                if isinstance(a[k], list) and a[k] and isinstance(a[k][0], float):
                    np.testing.assert_allclose(a[k], b[k], atol=1e-6)
                else:
                    assert a[k] == b[k], (name, k, a[key])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, source_list, tiny_clip):
    root = tmp_path_factory.mktemp("one") / "root"
    curate("ingest", source_list, "--root", root)
    curate("process", "--root", root, *_opts(tiny_clip), *PROCESS)
    return root


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_two_process_workers_on_one_root_equal_one_process(where, request, tmp_path, source_list, tiny_clip,
                                                           one_process):
    root = f"{request.getfixturevalue('s3')}/workers" if where == "bucket" else tmp_path / "root"
    curate("ingest", source_list, "--root", root)
    res = _results(_workers(root, tiny_clip, 2))
    assert [r["model_loads"] for r in res] == [1, 1]  # each worker loaded its encoder once, for all its batches
    assert sum(r["batches"] for r in res) == 3 and sum(r["ok"] for r in res) == 3  # each batch done once
    # a worker that did batches was busy a share of its wall; under load one worker may take all three batches
    assert all(r["busy"] is not None and 0 <= r["busy"] <= 1 and (r["busy"] > 0) == (r["batches"] > 0) for r in res)
    _same(root, one_process)
    assert not Root(root).ls(".locks", dirs=False)  # every lease released
    again = json.loads(curate("process", "--root", root, *_opts(tiny_clip), *PROCESS, "--worker", "--json").stdout)
    assert again["batches"] == 0 and again["total"] == 0  # nothing left: a rerun does nothing
    status = json.loads(curate("status", "--root", root, "--json").stdout)
    w = status["workers"]["cli/embed-clip"]
    assert w["done"] == 3 and w["running"] == 0 and w["model_loads"] >= 2 and w["busy"] > 0


@pytest.mark.parametrize("crash", ["process-source:2", "worker-commit:2"])
def test_a_worker_killed_mid_batch_loses_nothing_and_another_finishes(crash, tmp_path, source_list, tiny_clip,
                                                                      one_process):
    """SIGKILL inside a batch (its clips written, its embeddings not; or its rows in, its marker not): the
    batch's lease is left behind; the next worker takes it over and the tables equal one process's."""
    root = tmp_path / "root"
    curate("ingest", source_list, "--root", root)
    [p] = _workers(root, tiny_clip, 1, env={"CURATE_CRASH_AT": crash})
    p.communicate(timeout=600)
    assert p.returncode == -signal.SIGKILL
    assert Root(root).ls(".locks", dirs=False)  # the dead worker's lease(s)
    [res] = _results(_workers(root, tiny_clip, 1))
    assert res["stats"]["took_over"], res
    _same(root, one_process)
    assert not Root(root).ls(".locks", dirs=False)
    assert Board(root, "cli").marked("embed-clip", "done") == {0, 1, 2}
