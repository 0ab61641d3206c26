"""Glue shared by the curate DAGs: settings, param schemas, batching, path checks, result checks.

No stage logic lives here (the stages are :mod:`curate.stages.ingest` ... :mod:`curate.stages.publish`); this module
only decides *what* a task may touch and *whether* its outcome counts as a failure. It imports nothing
heavy at module level (the DAG processor imports it on every parse): pyarrow and the stages are
imported inside the functions that need them.

Settings come from the environment first, then from an Airflow Variable of the same name in lower case
(``CURATE_GPU_POOL`` -> Variable ``curate_gpu_pool``), then a default.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from airflow.sdk import Asset, AssetAlias, ExceptionRetryPolicy, Param, RetryAction, RetryRule
from airflow.sdk.exceptions import AirflowFailException

from curate.optspec import json_schema
from curate.stages.options import option, stage_options
from curate.store import NAME_PATTERN  # what curate.store.safe_name accepts, as a JSON-Schema pattern
from curate.store.storage import is_remote

#: every published subset is announced through this alias as the asset ``curate://<subset>``
SUBSETS = AssetAlias("curate_subsets")
INBOX_SUFFIXES = (".csv", ".jsonl", ".parquet")


class NothingSucceeded(RuntimeError):
    """A task had work and none of it succeeded, for reasons a retry may fix (network, rate limits)."""


# ----------------------------------------------------------------------------- settings
def setting(name: str, default: str | None = None) -> str | None:
    """Environment variable ``name``, else Airflow Variable ``name.lower()``, else ``default``."""
    value = os.environ.get(name)
    if value:
        return value
    try:
        from airflow.sdk import Variable

        value = Variable.get(name.lower(), default=None)
    except Exception:  # noqa: BLE001  (no Variable backend reachable here: plain imports, tests)
        value = None
    return str(value) if value not in (None, "") else default


def split_list(value: str | None) -> list[str]:
    """``"a:b"`` / ``"a,b"`` (os.pathsep or comma separated) -> ``["a", "b"]``."""
    out: list[str] = []
    for chunk in str(value or "").split(os.pathsep):
        out.extend(p.strip() for p in chunk.split(",") if p.strip())
    return out


def _resolve(path: str | os.PathLike) -> Path:
    return Path(str(path).removeprefix("file://")).expanduser().resolve()


def normalize_root(root: str | os.PathLike) -> str:
    """A root as curate names it: a resolved local path, or a URL (``s3://bucket/prefix``) without a
    trailing slash."""
    s = str(root)
    return s.rstrip("/") if is_remote(s) else str(_resolve(s))


def configured_roots() -> list[str]:
    """Dataset roots from ``CURATE_ROOTS``: the roots DAG runs may write and the UI plugin shows (local
    paths or URLs; separate them with commas when a URL holds the path separator ``:``)."""
    return [normalize_root(p) for p in split_roots(setting("CURATE_ROOTS"))]


def split_roots(value: str | None) -> list[str]:
    """Like :func:`split_list`, but ``s3://...`` keeps its ``:`` (only commas separate URLs)."""
    out: list[str] = []
    for chunk in str(value or "").split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        out.extend([chunk] if is_remote(chunk) else split_list(chunk))
    return out


def default_root() -> str:
    roots = configured_roots()
    return setting("CURATE_ROOT") or (roots[0] if roots else str(Path("~/curate-data").expanduser()))


def gpu_task_kwargs() -> dict[str, Any]:
    """``queue``/``pool``/``pool_slots`` of the GPU tasks (read when the DAG file is parsed)."""
    return {"queue": setting("CURATE_GPU_QUEUE", "gpu"), "pool": setting("CURATE_GPU_POOL", "gpu"),
            "pool_slots": int(setting("CURATE_GPU_POOL_SLOTS", "1") or 1)}


def _within(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def check_root(root: str) -> str:
    """The resolved root; when ``CURATE_ROOTS`` is set it must be one of those roots."""
    if not root:
        raise AirflowFailException("root: give a local directory or a URL such as s3://bucket/prefix")
    real = normalize_root(root)
    roots = configured_roots()
    if roots and real not in roots:
        raise AirflowFailException(f"root {root!r} is not one of the configured roots (CURATE_ROOTS={roots})")
    return real


def allowed_dirs(root: str) -> list[str]:
    """Directories a run may read local files from: ``CURATE_ALLOWED_DIRS``, plus ``ROOT/inbox`` on a local
    root (a bucket's inbox holds source lists only: :func:`check_source_list`)."""
    dirs = [str(_resolve(d)) for d in split_list(setting("CURATE_ALLOWED_DIRS"))]
    return dirs if is_remote(root) else [*dirs, str(_resolve(root) / "inbox")]


def check_local(path: str, dirs: Sequence[str], what: str) -> str:
    real = _resolve(path)
    if not any(_within(real, Path(d)) for d in dirs):
        raise AirflowFailException(f"{what} {path!r} is outside the directories DAG runs may read "
                                   f"({', '.join(dirs)}; set CURATE_ALLOWED_DIRS)")
    return str(real)


def check_source_list(root: str, path: str) -> str:
    """The source list a run may read: a local file under :func:`allowed_dirs`, or, on a root in object
    storage, an object under ``ROOT/inbox/`` (where the inbox DAG puts the lists it claims)."""
    if not is_remote(path):
        return check_local(path, allowed_dirs(root), "source list")
    from curate.errors import CurateError
    from curate.store.storage import Location

    inbox = f"{normalize_root(root)}/{INBOX}/"
    if is_remote(root) and str(path).startswith(inbox):
        try:
            return inbox + Location.clean(str(path)[len(inbox):])
        except CurateError as e:
            raise AirflowFailException(f"source list {path!r}: {e}") from None
    raise AirflowFailException(f"source list {path!r}: a URL must be under the root's inbox ({inbox}); copy the "
                               "list there, or to a local directory of CURATE_ALLOWED_DIRS")


@contextlib.contextmanager
def source_list_file(root: str, checked: str) -> Iterator[Path]:
    """A local file with the content of a list :func:`check_source_list` accepted (downloaded to the scratch
    directory, then removed, when it is in the bucket)."""
    if not is_remote(checked):
        yield Path(checked)
        return
    from curate.store import Root

    with Root(root).local_copy(checked[len(normalize_root(root)) + 1:]) as p:
        yield p


def local_access(root: str) -> dict[str, Any]:
    """``allow_local``/``local_dirs`` of the ingest stage: local media only from :func:`allowed_dirs`, and
    none at all when there are none (a root in a bucket without ``CURATE_ALLOWED_DIRS``)."""
    dirs = allowed_dirs(root)
    return {"allow_local": bool(dirs), "local_dirs": dirs}


def check_encoder_options(options: dict[str, Any], dirs: Sequence[str]) -> dict[str, str]:
    """Option values that name local files (weights=/..., model_config=...) must be inside ``dirs``."""
    out = {}
    for k, v in (options or {}).items():
        s = str(v)
        if s.startswith(("/", "~", "./", "../", "file://")):
            check_local(s, dirs, f"encoder option {k}=")
        out[str(k)] = s
    return out


# ----------------------------------------------------------------------------- params
def stage_param(stage: str, name: str, *, note: str = "", **override: Any) -> Param:
    """The Param of one declared stage option (:mod:`curate.stages.options`): its type, constraints, default
    and help, as `curate <stage> --help` shows them; ``note`` adds what only a DAG run has to know,
    ``override`` replaces schema keys where the DAG means something else (``captioner``: null = no task)."""
    schema = {**json_schema(option(stage, name)), **override}
    if note:
        schema["description"] = f"{schema['description']} {note}"
    return Param(schema.pop("default"), **schema)


LOCAL_PATHS = "Local paths must be under CURATE_ALLOWED_DIRS."
#: the filter options a run takes as params of their own; every other one goes in ``filters``
FILTER_PARAMS = ("min_sim", "min_duration", "max_duration")


def pipeline_params() -> dict[str, Param]:
    """JSON-Schema params of ``curate_pipeline`` (validated when a run is triggered). The stage options are
    generated from their declarations; sources, root, one_pass, batch_size and publish_tasks are the DAG's."""
    return {
        "sources": Param(type="string", minLength=1,
                         description="Path of a source list (CSV/TSV/JSONL/JSON/Parquet/TXT with a 'url' column, "
                                     "optional caption/title/start_s/end_s) under CURATE_ALLOWED_DIRS or ROOT/inbox."),
        "root": Param(default_root(), type="string", minLength=1,
                      description="Dataset root (must be under CURATE_ROOTS when that is set)."),
        "subset": stage_param("filter", "subset"),
        "encoder": stage_param("embed", "encoder"),
        "encoder_options": stage_param("embed", "options", note=LOCAL_PATHS),
        "embedding_name": stage_param("embed", "name"),
        "device": stage_param("embed", "device"),
        "embed_batch_size": stage_param("embed", "batch_size"),
        "one_pass": Param(True, type="boolean",
                          description="Split and embed in ONE decode per source, on the GPU worker (`curate process`), "
                                      "whenever the detector and encoder options allow it (as `curate run`); false: "
                                      "split tasks per batch, then embed."),
        "decode_workers": stage_param("process", "workers", note="(With one_pass, on the GPU worker.)"),
        **{k: stage_param("filter", k, note="(null: no rule)") for k in FILTER_PARAMS},
        "detector": stage_param("split", "detector"),
        "min_clip_s": stage_param("split", "min_clip_s"),
        "max_clip_s": stage_param("split", "max_clip_s"),
        "batch_size": Param(50, type="integer", minimum=1, maximum=1_000_000,
                            description="Sources per mapped ingest/split task (raised automatically so that "
                                        "the number of batches stays within [core] max_map_length)."),
        "shard_size": stage_param("publish", "shard_size"),
        "publish_tasks": Param(None, type=["null", "integer"], minimum=1,
                               description="Mapped cut tasks that write the WebDataset shards side by side "
                                           "(null: one per shard, at most [core] max_map_length)."),
        "gpu_slots": Param(None, type=["null", "integer"], minimum=1, maximum=1024,
                           description="Resident worker slots per GPU stage (mapped tasks on the gpu queue; each loads "
                                       "its model once and claims batches until none is left). null: "
                                       "CURATE_GPU_SLOTS, else 2; set it to the size of the gpu pool."),
        "captioner": stage_param("caption", "captioner", default=None, type=["null", "string"],
                                 note="Runs the optional caption task on the GPU queue: every clip gets a generated "
                                      "caption, embedded with the run's encoder; min_sim then applies to it and it "
                                      "is the published caption (null: no captioning)."),
        "captioner_options": stage_param("caption", "options", note=LOCAL_PATHS),
        "scorers": stage_param("score", "scorers"),
        "scorer_options": stage_param("score", "options", note=LOCAL_PATHS),
        "dedup_groups": stage_param("dedup", "groups", note="(With the dedup scorer on a root where it is clustered; "
                                                             "its options are scorer_options.dedup.)"),
        "filters": filters_param(),
    }


#: the filter rules beyond min_sim/min_duration/max_duration, as JSON Schema (see `curate filter --help`);
#: ``preset`` is one of the shipped presets (a DAG run names no files)
FILTER_SCHEMA: dict[str, Any] = {
    name: json_schema(o, nullable=False, with_default=False) for name, o in stage_options("filter").items()
    if name not in (*FILTER_PARAMS, "subset", "encoder", "caption")
}


def filters_param() -> Param:
    return Param({}, type="object", properties=FILTER_SCHEMA, additionalProperties=False,
                 description="More filter rules (as `curate filter`): " + ", ".join(FILTER_SCHEMA) + ".")


def filter_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of curate.stages.filter.filter_clips from a run's params."""
    return {**{k: params.get(k) for k in FILTER_PARAMS}, **dict(params.get("filters") or {})}


def check_scorer_options(options: dict[str, Any], dirs: Sequence[str]) -> dict[str, dict[str, str]]:
    return {str(k): check_encoder_options(v or {}, dirs) for k, v in (options or {}).items()}


def dedup_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of curate.stages.dedup.dedup from a run's params: the run's embedding set and the dedup
    scorer's options (``scorer_options.dedup``)."""
    opts = check_scorer_options(params.get("scorer_options") or {}, allowed_dirs(params["root"]))
    return {"encoder": embedding_name(params), "options": opts.get("dedup") or {}}


def refilter_params() -> dict[str, Param]:
    p = pipeline_params()
    keep = ("root", "min_sim", "min_duration", "max_duration", "shard_size", "filters")
    out = {k: p[k] for k in keep}
    out["subset"] = stage_param("filter", "subset", default="refiltered",
                                note="A new subset: it must differ from the subset whose event triggered the run.")
    out["encoder"] = stage_param("filter", "encoder")
    return out


def inbox_params() -> dict[str, Param]:
    return {
        "root": Param(setting("CURATE_INBOX_ROOT") or default_root(), type="string", minLength=1,
                      description="Dataset root whose inbox/ is scanned."),
        "subset": Param(setting("CURATE_INBOX_SUBSET", "inbox"), type="string", pattern=NAME_PATTERN,
                        description="Subset every inbox run publishes."),
        "pipeline_conf": Param({}, type="object", description="Extra curate_pipeline params for every run."),
        "settle_s": Param(float(setting("CURATE_INBOX_SETTLE_S", "30") or 30), type="number", minimum=0,
                          description="Ignore lists modified less than this many seconds ago (still being written)."),
    }


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


def embedding_name(params: dict[str, Any]) -> str:
    """The embedding set of a run: ``embedding_name``, else the encoder's name."""
    return params.get("embedding_name") or params["encoder"]


def source_status(root: str, ids: Sequence[str]) -> dict[str, int]:
    """ok / error / retryable-error counts of ``ids`` in the sources table."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from curate.stages.ingest import RETRYABLE_KINDS
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


# ----------------------------------------------------------------------------- inbox
INBOX = "inbox"
PROCESSED = "inbox/.processed"


def _marker(sha: str) -> str:
    """The claim of the list whose content hash is ``sha`` (relative to the root)."""
    return f"{PROCESSED}/{sha}.json"


def inbox_run_id(root: str, sha: str) -> str:
    return f"inbox__{hashlib.sha256(root.encode()).hexdigest()[:8]}__{sha[:20]}"


def claim_inbox(root: str, subset: str, pipeline_conf: dict | None = None, settle_s: float = 30.0) -> list[dict]:
    """Claim new lists in ``ROOT/inbox`` and return ``TriggerDagRunOperator`` kwargs, one per list.

    The inbox lives in the root, local directory or bucket alike (through the root's file API). A list is
    identified by its content hash. It is copied to ``inbox/.processed/<sha256><suffix>`` and claimed by
    creating ``.processed/<sha256>.json`` conditionally (:meth:`curate.store.Root.create`: a hard link of a
    fully written file locally, put-if-absent on object storage: it exists completely or not at all, and
    only one claimer can create it). Claims whose trigger has not been confirmed (``state: claimed``, e.g.
    after a crash) are returned again; the pipeline run id is derived from the hash, so triggering twice
    never starts a second run.
    """
    from curate.store import Root

    r = Root(root)
    claims: list[dict] = []
    for name in r.ls(PROCESSED, dirs=False):
        if name.startswith(".") or not name.endswith(".json"):  # temporary files left by a crash; the copies
            continue
        try:
            data = r.read_json(f"{PROCESSED}/{name}")
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("state") == "claimed":
            claims.append(_trigger_kwargs(root, subset, pipeline_conf, data))
    now = time.time()
    for name in r.ls(INBOX, dirs=False):
        rel, suffix = f"{INBOX}/{name}", PurePosixPath(name).suffix.lower()
        if name.startswith(".") or suffix not in INBOX_SUFFIXES or now - r.modified(rel) < settle_s:
            continue
        sha = _sha256(r, rel)
        if r.exists(_marker(sha)):
            continue
        copy = f"{PROCESSED}/{sha}{suffix}"
        with r.local_output(copy) as tmp:  # becomes the copy (moved or uploaded) only when it is complete
            if _sha256(r, rel, copy_to=tmp) != sha:  # changed while we read it: still being written
                tmp.unlink()
                continue
        data = {"sha256": sha, "file": name, "copy": r.url(copy), "run_id": inbox_run_id(root, sha),
                "claimed_at": time.time(), "state": "claimed"}
        if r.create(_marker(sha), json.dumps(data, indent=2)):
            claims.append(_trigger_kwargs(root, subset, pipeline_conf, data))
    return claims


def _sha256(root, rel: str, copy_to: Path | None = None) -> str:
    """Content hash of ``rel`` under ``root``; with ``copy_to`` (a local file), also write (and fsync) a copy of
    exactly those bytes."""
    h = hashlib.sha256()
    with root.open(rel, "rb") as src, (open(copy_to, "wb") if copy_to else open(os.devnull, "wb")) as dst:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            if copy_to:
                dst.write(chunk)
        if copy_to:
            dst.flush()
            os.fsync(dst.fileno())
    return h.hexdigest()


def _trigger_kwargs(root: str, subset: str, pipeline_conf: dict | None, data: dict) -> dict:
    conf = {**(pipeline_conf or {}), "sources": data["copy"], "root": root, "subset": subset}
    return {"trigger_run_id": data["run_id"], "conf": conf}


def mark_inbox_done(root: str, claims: Sequence[dict]) -> list[str]:
    """Record that the pipeline runs of ``claims`` exist (state ``triggered``)."""
    from curate.store import Root

    r = Root(root)
    done = []
    for c in claims:
        marker = _marker(PurePosixPath(c["conf"]["sources"]).stem)
        data = r.read_json(marker)
        data.update(state="triggered", triggered_at=time.time(), dag_run_id=c["trigger_run_id"])
        r.write_bytes(marker, json.dumps(data, indent=2))  # atomic: a rename locally, one PUT remotely
        done.append(data["file"])
    return done
