"""Glue shared by the curate DAGs' tasks: retries, batching, GPU slots, result checks, assets.

No stage logic lives here (the stages are :mod:`curate.stages.ingest` ... :mod:`curate.stages.publish`); this module
only decides *what* a task runs and *whether* its outcome counts as a failure. Settings and path checks are in
:mod:`curate.airflow.settings`, params in :mod:`curate.airflow.params`, the inbox in :mod:`curate.airflow.inbox`.
It imports nothing heavy at module level (the DAG processor imports it on every parse).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, timedelta
from typing import Any

from airflow.sdk import Asset, AssetAlias, ExceptionRetryPolicy, RetryAction, RetryRule
from airflow.sdk.exceptions import AirflowFailException

from curate.airflow.settings import setting

#: every published subset is announced through this alias as the asset ``curate://<subset>``
SUBSETS = AssetAlias("curate_subsets")


class NothingSucceeded(RuntimeError):
    """A task had work and none of it succeeded, for reasons a retry may fix (network, rate limits)."""


# ----------------------------------------------------------------------------- task helpers
def retry_policy() -> ExceptionRetryPolicy:
    """Retry what a retry can fix; fail at once on bad input or configuration."""
    return ExceptionRetryPolicy(rules=[
        RetryRule(exception="curate.errors.StageBusy", action=RetryAction.RETRY,
                  reason="another run holds this stage's lock on the root"),
        RetryRule(exception="curate.errors.CurateError", action=RetryAction.FAIL,
                  reason="bad input or configuration: a retry cannot fix it"),
        RetryRule(exception="builtins.MemoryError", action=RetryAction.FAIL, reason="out of memory"),
    ])


def default_args(retries: int = 2) -> dict[str, Any]:
    """Retries of every curate task; ``CURATE_RETRY_DELAY_S`` (default 30) is the first retry's delay."""
    delay = float(setting("CURATE_RETRY_DELAY_S", "30") or 30)
    return {"retries": retries, "retry_delay": timedelta(seconds=delay), "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=30), "retry_policy": retry_policy()}


def label(text: str) -> None:
    """Set the ``{{ curate_label }}`` that ``map_index_template`` renders for this mapped task."""
    from airflow.sdk import get_current_context

    get_current_context()["curate_label"] = text


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def try_number() -> int:
    from airflow.sdk import get_current_context

    return int(getattr(get_current_context()["ti"], "try_number", 1) or 1)


def locked(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a stage, waiting while another run holds the same stage's lock on the same root.

    A stage takes a per-root, per-stage lock and fails at once when it is held; two mapped batches or
    two DAG runs on one root therefore queue here (the lock is an flock: never stale).
    """
    from curate.errors import StageBusy

    limit = float(setting("CURATE_LOCK_WAIT_S", str(6 * 3600)) or 0)
    t0 = last_log = time.monotonic()
    while True:
        try:
            return fn(*args, **kwargs)
        except StageBusy as e:
            now = time.monotonic()
            if now - t0 > limit:
                raise
            if now - last_log > 60 or last_log == t0:
                print(f"waiting for the stage lock: {e}", flush=True)
                last_log = now
            time.sleep(2.0)


def max_map_length() -> int:
    try:
        from airflow.sdk.configuration import conf

        return conf.getint("core", "max_map_length", fallback=1024)
    except Exception:  # noqa: BLE001
        return 1024


def make_batches(ids: Iterable[str], batch_size: int, max_len: int | None = None) -> list[dict[str, Any]]:
    """Split source ids into ``{"index", "source_ids"}`` batches, never more than ``max_len`` of them."""
    ids = list(dict.fromkeys(ids))
    if not ids:
        return []
    max_len = max(1, max_len or max_map_length())
    size = max(1, int(batch_size), math.ceil(len(ids) / max_len))
    return [{"index": i, "source_ids": ids[j:j + size]} for i, j in enumerate(range(0, len(ids), size))]


def cut_tasks(n_shards: int, tasks: int | None = None, max_len: int | None = None) -> list[dict[str, int]]:
    """``{"index": i, "of": n}`` for the mapped cut tasks: task i writes the shards k with k % n == i."""
    n = max(1, min(int(tasks or n_shards or 1), n_shards or 1, max_len or max_map_length()))
    return [{"index": i, "of": n} for i in range(n)]


def use_one_pass(params: dict[str, Any]) -> bool:
    """Whether a run's batches split and embed in one decode (`curate process`): ``one_pass`` and a detector and
    encoder options that allow it, by the rule `curate run` applies (:func:`curate.pipeline.one_pass_embed`)."""
    from curate.pipeline import one_pass_embed

    cfg = {"one_pass": bool(params.get("one_pass")), "split": {"detector": params.get("detector") or "auto"}}
    return one_pass_embed(cfg, [{"options": dict(params.get("encoder_options") or {})}]) is not None


def board_name() -> str:
    """The board (``ROOT/.work/<board>``, :class:`curate.workers.Board`) of this DAG run: its batches and what
    each stage did with them (a cleared or retried task of the run finds it again)."""
    from airflow.sdk import get_current_context

    return "run-" + hashlib.sha256(str(get_current_context()["run_id"]).encode()).hexdigest()[:16]


def gpu_slots(params: dict[str, Any]) -> list[dict[str, int]]:
    """``{"slot": i, "of": n}`` for the mapped slot tasks of each GPU stage: ``gpu_slots``, else
    ``CURATE_GPU_SLOTS`` (the size of the gpu pool), else 2."""
    n = int(params.get("gpu_slots") or setting("CURATE_GPU_SLOTS", "2") or 2)
    return [{"slot": i, "of": n} for i in range(max(1, n))]


def mark_batch(root: str, index: int, stage: str, state: str, info: dict | None = None) -> None:
    """Record on the run's board that ``stage`` is ``done``/``failed`` for batch ``index`` (the GPU slots
    take a batch as soon as its upstream marker is there)."""
    from curate.workers import Board

    Board(root, board_name()).mark(stage, index, state, info)


def run_slot(root: str, work: Any, slot: dict) -> dict:
    """One resident worker slot of a GPU stage over this run's board; its per-batch lines go to the task log,
    its stats (batches done/failed, model loads, busy fraction) are the task's result."""
    from airflow.sdk.exceptions import AirflowRescheduleException

    from curate.workers import Board, run_worker

    label(f"slot {slot['slot']}/{slot['of']}")
    idle = float(setting("CURATE_SLOT_IDLE_S", "120") or 120)
    st = run_worker(root, work, board=board_name(), log=lambda m: print(m, flush=True), idle_s=idle,
                    worker_id=f"slot{slot['slot']}-try{try_number()}-{hashlib.sha256(os.urandom(8)).hexdigest()[:6]}")
    if st["state"] == "idle":  # its upstream has nothing ready yet: free the gpu pool slot, come back later
        from datetime import datetime

        raise AirflowRescheduleException(datetime.now(UTC) + timedelta(seconds=max(1.0, idle)))
    # this attempt's stats, and the stage's batches done / running / failed and its workers' totals so far
    return {k: v for k, v in st.items() if k != "events"} | {"events": st["events"][-200:],
                                                              "summary": Board(root, board_name()).summary(work.stage)}


def source_status(root: str, ids: Sequence[str]) -> dict[str, int]:
    """ok / error / retryable-error counts of ``ids`` in the sources table."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from curate.media.fetch import RETRYABLE_KINDS
    from curate.store import Root

    t = Root(root).sources.read_arrow(columns=["status", "error_kind"], filter=ds.field("source_id").isin(list(ids)))
    err = t.filter(pc.equal(t["status"], "error"))
    retryable = 0
    if err.num_rows:
        hit = pc.is_in(err["error_kind"], value_set=pa.array(sorted(RETRYABLE_KINDS)))
        retryable = int(pc.sum(hit).as_py() or 0)
    return {"ok": int(pc.sum(pc.equal(t["status"], "ok")).as_py() or 0), "error": err.num_rows,
            "retryable": retryable}


def require_ingested(root: str, batch: dict, result: dict) -> dict:
    """Fail the batch only when none of its sources is ingested (permanent errors fail fast)."""
    st = source_status(root, batch["source_ids"])
    out = {**result, "batch": batch["index"], "sources_ok": st["ok"], "sources_error": st["error"]}
    if st["ok"] == 0 and st["error"]:
        msg = (f"none of the {len(batch['source_ids'])} sources of batch {batch['index']} was ingested: "
               + "; ".join(result.get("errors", [])[:5]))
        if st["retryable"]:
            raise NothingSucceeded(msg + " (retryable errors: retrying with exponential backoff)")
        raise AirflowFailException(msg)
    return out


def require_some(result: dict, what: str) -> dict:
    """Fail (without retry: the input will not change) when there was work and nothing succeeded."""
    if result.get("total", 0) > 0 and result.get("ok", 0) == 0 and result.get("error", 0) > 0:
        raise AirflowFailException(f"{what}: none of {result['total']} items succeeded: "
                                   + "; ".join(result.get("errors", [])[:5]))
    return result


def run_clip_count(root: str, source_ids: Sequence[str]) -> int:
    """How many ok clips the sources of this run have (0: nothing reached the embed stage)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from curate.store import Root

    t = Root(root).clips.read_arrow(columns=["status"], filter=ds.field("source_id").isin(list(source_ids)))
    return int(pc.sum(pc.equal(t["status"], "ok")).as_py() or 0) if t.num_rows else 0


def subset_asset(subset: str) -> Asset:
    """The asset of a published subset: ``curate://<subset>`` (schedule consumers on this)."""
    return Asset(f"curate://{subset}")


def asset_extra(root: str, summary: dict, published: dict) -> dict[str, Any]:
    """Counts and thresholds recorded on the subset's asset event."""
    rules = summary.get("rules", [])
    return {
        "root": root, "subset": summary.get("subset"), "path": published.get("path"),
        "scored": summary.get("total"), "kept": summary.get("kept"), "dropped": summary.get("dropped"),
        "published": published.get("published"), "failed": published.get("error"),
        "shards": published.get("shards"),
        "thresholds": {r["name"]: r["value"] for r in rules},
        "rules": [{"name": r["name"], "column": r["column"], "op": r["op"], "value": r["value"]} for r in rules],
        "dropped_by_rule": summary.get("dropped_by_rule", {}),
    }


def triggering_root(context: dict) -> tuple[str | None, str | None]:
    """(root, subset) from the asset event that triggered this run, if any."""
    events = context.get("triggering_asset_events") or {}
    for evs in events.values():
        for ev in evs:
            extra = getattr(ev, "extra", None) or {}
            if extra.get("root"):
                return str(extra["root"]), extra.get("subset")
    return None, None


