"""Resident workers: one process per GPU (or per slot) loads its model once, then streams batches through it.

A *board* (``ROOT/.work/<board>/``, small JSON files written by put-if-absent, so it works on a local disk
and in a bucket alike) holds the batches of a run and what each stage did with them::

    batches/<index>.json              {"index", "source_ids"}        (created once; never changed)
    batches/.sealed                   no batch will be added        (the DAG's register task)
    <stage>/done/<index>.json         the stage committed this batch (its counts)
    <stage>/failed/<index>.json       the stage gave this batch up   (nothing of it succeeded / it raised)
    <stage>/.finished                 every batch of the stage is done or failed
    <stage>/workers/<worker>.json     one worker's stats (model loads, setup s, forward s, wall s, busy)

A batch is READY for a stage when its upstream stage committed it (``<upstream>/done/<index>``), so a batch
moves on as soon as its own upstream is done. A worker claims a ready batch with a lease
(``.locks/work.<board>.<stage>.<index>``, :class:`curate.store.Lease`): its holder works on it; a holder
that dies leaves a stale lease that the next worker takes over (the stage functions are idempotent per
batch, so the batch is finished, never doubled). The worker runs ``1 + prefetch`` batches at once in
threads: while the model (serialized by one lock, timed) runs on batch k, the decode threads of batch k+1
already fill their bounded read-ahead queue, so the GPU does not wait for the next batch's first frames.

The loop ends when every batch whose upstream is done has this stage done or failed and the upstream
is finished (its ``.finished`` marker; no upstream: the batches present). `curate <stage> --worker` and
the DAG's slot tasks run :func:`run_worker`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from curate.encoders import encoder_loads, load_encoder
from curate.errors import CurateError
from curate.faults import crashpoint
from curate.plugins import get_splitter
from curate.stages.caption import caption as caption_stage
from curate.stages.caption import load_captioner
from curate.stages.embed import embed as embed_stage
from curate.stages.process import process as process_stage
from curate.stages.score import make_scorers, scope_of
from curate.stages.score import score as score_stage
from curate.store import Lease, Root
from curate.store.leases import HOST, lock_name

WORK = ".work"
#: the board `curate <stage> --worker` uses when none is named
CLI_BOARD = "cli"
#: first and longest wait between two looks at the board while no batch is ready (doubling in between)
POLL_S, MAX_POLL_S = 0.5, 10.0
#: how long a worker waits for an upstream that makes no progress before it gives up
WAIT_S = float(os.environ.get("CURATE_WORKER_WAIT_S", str(6 * 3600)))
#: batches of source ids to add to the board before work starts, or a function that returns them (called in a thread)
Plan = Iterable[Sequence[str]] | Callable[[], Iterable[Sequence[str]]]
#: attempts at one batch within one worker before it is marked failed (a stage error, not a dead worker)
ATTEMPTS = 2


def _now() -> float:
    return time.time()


def process_age_s() -> float | None:
    """Seconds since this process started (fork or exec; Linux ``/proc``, 10 ms ticks; None elsewhere): what a
    worker spent before :func:`run_worker` (interpreter, imports, the CLI, a task runner's own start-up)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the "(comm)"
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return round(max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK")), 2)
    except (OSError, ValueError, IndexError):
        return None


#: packages whose import is most of a GPU worker's start-up: reported as already imported (preloaded) or not
HEAVY_MODULES = ("torch", "torchvision", "open_clip", "transformers")


# ----------------------------------------------------------------------------- the board
class Board:
    """The batches of one run on a root and each stage's markers (see the module's docstring)."""

    def __init__(self, root: Root | str, name: str = CLI_BOARD) -> None:
        self.root = root if isinstance(root, Root) else Root(root)
        self.name = lock_name(name)
        self.base = f"{WORK}/{self.name}"
        self._batches: dict[int, list[str]] = {}

    # batches
    def add_batches(self, groups: Iterable[Sequence[str]], seal: bool = False) -> list[int]:
        """Add batches of source ids not in a batch yet (one file each, created conditionally: concurrent
        planners agree); returns the indices of the batches added here. ``seal``: no batch is added after."""
        added: list[int] = []
        self.batches(refresh=True)  # the ids already in a batch are skipped
        for ids in groups:
            ids = [s for s in ids if s not in self.source_index()]
            if not ids:
                continue
            while True:
                index = max(self.batches(), default=-1) + 1
                body = json.dumps({"index": index, "source_ids": list(ids)})
                if self.root.create(f"{self.base}/batches/{index:06d}.json", body):
                    self._batches[index] = list(ids)
                    added.append(index)
                    break
                self.batches(refresh=True)  # another planner took this index: its ids are skipped above
                ids = [s for s in ids if s not in self.source_index()]
                if not ids:
                    break
        if seal:
            self.root.create(f"{self.base}/batches/.sealed", "{}")
        return added

    def batches(self, refresh: bool = False) -> dict[int, list[str]]:
        """index -> source ids of every batch (batch files never change: each is read once)."""
        if refresh or not self._batches:
            for n in self.root.ls(f"{self.base}/batches", dirs=False):
                if n.endswith(".json") and not n.startswith("."):
                    i = int(n.split(".")[0])
                    if i not in self._batches:
                        data = self.root.read_json(f"{self.base}/batches/{n}") or {}
                        self._batches[i] = list(data.get("source_ids") or [])
        return dict(sorted(self._batches.items()))

    def source_index(self) -> set[str]:
        return {s for ids in self._batches.values() for s in ids}

    def sealed(self) -> bool:
        return self.root.exists(f"{self.base}/batches/.sealed")

    # markers
    def mark(self, stage: str, index: int, state: str, info: dict | None = None) -> bool:
        """Record ``done`` / ``failed`` for a batch (first writer wins)."""
        return self.root.create(f"{self.base}/{stage}/{state}/{index:06d}.json", json.dumps(info or {}, default=str))

    def marked(self, stage: str, state: str) -> set[int]:
        return {int(n.split(".")[0]) for n in self.root.ls(f"{self.base}/{stage}/{state}", dirs=False)
                if n.endswith(".json") and not n.startswith(".")}

    def marks(self, stage: str, state: str) -> dict[int, dict]:
        return {i: self.root.read_json(f"{self.base}/{stage}/{state}/{i:06d}.json") or {}
                for i in self.marked(stage, state)}

    def finish(self, stage: str) -> None:
        """Every batch of ``stage`` is done or failed (workers waiting on it as upstream may end)."""
        self.root.create(f"{self.base}/{stage}/.finished", json.dumps({"at": _now()}))

    def finished(self, stage: str) -> bool:
        return self.root.exists(f"{self.base}/{stage}/.finished")

    # leases
    def lease_rel(self, stage: str, index: int) -> str:
        return f".locks/work.{self.name}.{lock_name(stage)}.{index:06d}"

    def running(self, stage: str) -> set[int]:
        """Batches of ``stage`` whose lease file exists (held, or left by a dead worker until taken over)."""
        prefix = f"work.{self.name}.{lock_name(stage)}."
        return {int(n[len(prefix):]) for n in self.root.ls(".locks", dirs=False)
                if n.startswith(prefix) and n[len(prefix):].isdigit()}

    # stats
    def write_stats(self, stage: str, worker: str, stats: dict) -> None:
        self.root.write_bytes(f"{self.base}/{stage}/workers/{lock_name(worker)}.json", json.dumps(stats, default=str))

    def stats(self, stage: str) -> list[dict]:
        d = f"{self.base}/{stage}/workers"
        return [s for n in self.root.ls(d, dirs=False) if n.endswith(".json")
                if (s := self.root.read_json(f"{d}/{n}")) is not None]

    def summary(self, stage: str) -> dict[str, Any]:
        """Batches done / running / failed / waiting of one stage, and its workers' totals (status, the UI)."""
        n = len(self.batches(refresh=True))
        done, failed = self.marked(stage, "done"), self.marked(stage, "failed")
        running = self.running(stage) - done - failed
        return {"board": self.name, "stage": stage, "batches": n, "done": len(done), "running": len(running),
                "failed": len(failed), "waiting": n - len(done | failed | running),
                "finished": self.finished(stage), **worker_totals(self.stats(stage))}


def worker_totals(stats: list[dict]) -> dict[str, Any]:
    """Totals of several workers' stats: workers, model loads, setup / forward / wall seconds, busy fraction."""
    out: dict[str, Any] = {"workers": len(stats), "model_loads": sum(int(s.get("model_loads", 0)) for s in stats)}
    for k in ("setup_s", "forward_s", "wall_s"):
        out[k] = round(sum(float(s.get(k, 0.0)) for s in stats), 3)
    out["busy"] = round(out["forward_s"] / out["wall_s"], 6) if out["wall_s"] else None
    out["batches_done"] = sum(len(s.get("batches_done", [])) for s in stats)
    return out


def boards(root: Root | str) -> list[Board]:
    root = root if isinstance(root, Root) else Root(root)
    return [Board(root, n) for n in root.ls(WORK, dirs=True)]


def stage_summaries(root: Root | str) -> dict[str, dict[str, Any]]:
    """``"<board>/<stage>"`` -> :meth:`Board.summary`, for every stage a worker ran on the root."""
    out = {}
    for b in boards(root):
        for stage in b.root.ls(b.base, dirs=True):
            if stage != "batches" and b.root.ls(f"{b.base}/{stage}/workers", dirs=False):
                out[f"{b.name}/{stage}"] = b.summary(stage)
    return out


# ----------------------------------------------------------------------------- the model clock
class ModelClock:
    """One lock around a resident model's forward calls (one GPU stream: batches in flight take turns) and
    the time spent inside them: the worker's GPU-busy time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy_s = 0.0
        self.calls = 0

    def wrap(self, obj: Any, methods: Iterable[str]) -> Any:
        """Time (and serialize) ``obj``'s ``methods`` on this instance only (the class is left alone)."""
        for m in methods:
            fn = getattr(obj, m, None)
            if callable(fn):
                setattr(obj, m, self.timed(fn))
        return obj

    def timed(self, fn: Callable) -> Callable:
        def call(*a, **k):
            with self.lock:
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    self.busy_s += time.perf_counter() - t
                    self.calls += 1

        return call


# ----------------------------------------------------------------------------- stage work
class StageWork:
    """What a worker does for one stage: :meth:`setup` once (model loads), :meth:`run` per batch.

    Subclasses set ``stage`` (its name on the board), ``upstream`` (the stage whose done markers make a
    batch ready; None: every batch is ready) and time their model's forward through ``self.clock``."""

    stage = "stage"
    upstream: str | None = None

    def __init__(self) -> None:
        self.clock = ModelClock()
        self.loads = 0  # models this work created in setup (encoder loads are counted by curate.stages.embed)

    def setup(self) -> None:
        """Load the model(s) once."""

    def run(self, root: Root, source_ids: list[str]) -> dict:
        """Process one batch with the resident model; returns the stage's result (``as_dict``)."""
        raise NotImplementedError


class ProcessWork(StageWork):
    """`curate process`: split + embed in one decode per source, the encoder (and a TransNetV2) resident."""

    stage, upstream = "embed", None

    def __init__(self, encoder: str = "clip", *, options: dict | None = None, name: str | None = None,
                 detector: str = "auto", detector_options: dict | None = None, min_clip_s: float = 1.0,
                 max_clip_s: float | None = 60.0, device: str = "auto", batch_size: int = 32, workers: int = 1) -> None:
        super().__init__()
        self.kw = dict(options=options, name=name, detector=detector, detector_options=detector_options,
                       min_clip_s=min_clip_s, max_clip_s=max_clip_s, device=device, batch_size=batch_size,
                       workers=workers)
        self.encoder = encoder
        self.enc = self.splitter = None

    def setup(self) -> None:
        options = {**{k: str(v) for k, v in (self.kw["options"] or {}).items()}, "decoder": "ffmpeg"}
        self.enc = self.clock.wrap(load_encoder(self.encoder, options, self.kw["device"]),
                                   ("embed_video_batch", "embed_texts"))
        self.splitter = get_splitter(self.kw["detector"]).create(**(self.kw["detector_options"] or {}))
        if hasattr(self.splitter, "load"):  # TransNetV2: its network, once
            self.splitter.load()
            self.loads += 1

    def run(self, root: Root, source_ids: list[str]) -> dict:
        return process_stage(root, self.encoder, source_ids=source_ids, encoder_obj=self.enc,
                             splitter_obj=self.splitter, **self.kw).as_dict()


class EmbedWork(StageWork):
    """`curate embed` (clips already split): the encoder resident."""

    stage, upstream = "embed", None

    def __init__(self, encoder: str = "clip", *, options: dict | None = None, name: str | None = None,
                 device: str = "auto", batch_size: int = 32, workers: int = 2) -> None:
        super().__init__()
        self.encoder = encoder
        self.kw = dict(options=options, name=name, device=device, batch_size=batch_size, workers=workers)
        self.enc = None

    def setup(self) -> None:
        self.enc = self.clock.wrap(load_encoder(self.encoder, self.kw["options"], self.kw["device"]),
                                   ("embed_video_batch", "embed_texts"))

    def run(self, root: Root, source_ids: list[str]) -> dict:
        return embed_stage(root, self.encoder, source_ids=source_ids, encoder_obj=self.enc, **self.kw).as_dict()


class ScoreWork(StageWork):
    """The per-clip scorers (aesthetic, motion, ...), created once; their ``compute`` is the timed part (it
    decodes as well as runs the model: the busy fraction is an upper bound here)."""

    stage, upstream = "score", "embed"

    def __init__(self, scorers: Iterable[str] = ("technical", "alignment"), *, encoder: str | None = None,
                 options: dict | None = None) -> None:
        super().__init__()
        self.names, self.encoder, self.options = list(scorers), encoder, options
        self.made: list = []

    def setup(self) -> None:
        self.made = [(n, s) for n, s in make_scorers(self.names, self.encoder, self.options) if scope_of(s) == "clip"]
        for _, s in self.made:
            self.clock.wrap(s, ("compute",))
            self.loads += 1

    def run(self, root: Root, source_ids: list[str]) -> dict:
        if not self.made:
            return {"stage": "score", "total": 0, "ok": 0, "error": 0, "skipped": 0}
        return score_stage(root, scorers=[n for n, _ in self.made], encoder=self.encoder, options=self.options,
                           source_ids=source_ids, scorer_objs=self.made).as_dict()


def caption_batch(root: Root, captioner: str, captioner_obj: Any, source_ids: list[str], **kw: Any) -> dict:
    """Caption one batch's clips with a resident captioner: per batch, no root lock, only its missing clips."""
    return caption_stage(root, captioner, captioner_obj=captioner_obj, source_ids=source_ids, **kw).as_dict()


class CaptionWork(StageWork):
    """`curate caption` per batch, then the embedding of the generated captions (`curate embed --caption`):
    the captioner and the encoder resident."""

    stage, upstream = "caption", "embed"

    def __init__(self, captioner: str = "hf", *, options: dict | None = None, name: str | None = None,
                 device: str = "auto", batch_size: int = 8, workers: int = 2, encoder: str | None = None,
                 encoder_options: dict | None = None, embedding_name: str | None = None,
                 embed_batch_size: int = 32) -> None:
        super().__init__()
        self.captioner, self.name = captioner, name or captioner
        self.kw = dict(options={k: str(v) for k, v in (options or {}).items()}, name=self.name, device=device,
                       batch_size=batch_size, workers=workers)
        self.encoder, self.encoder_options = encoder, {k: str(v) for k, v in (encoder_options or {}).items()}
        self.embedding_name = embedding_name or (f"{encoder}_{self.name}" if encoder else None)
        self.embed_batch_size = embed_batch_size
        self.cap = self.enc = None

    def setup(self) -> None:
        self.cap = load_captioner(self.captioner, self.kw["options"], self.kw["device"])
        self.loads += 1
        for m in ("caption_batch", "caption", "generate"):  # the plugin's generation call, whichever it has
            if callable(getattr(self.cap, m, None)):
                self.clock.wrap(self.cap, (m,))
                break
        if self.encoder:
            self.enc = self.clock.wrap(load_encoder(self.encoder, self.encoder_options, self.kw["device"]),
                                       ("embed_video_batch", "embed_texts"))

    def run(self, root: Root, source_ids: list[str]) -> dict:
        res = caption_batch(root, self.captioner, self.cap, source_ids, **self.kw)
        if self.encoder:
            emb = embed_stage(root, self.encoder, options=self.encoder_options, name=self.embedding_name,
                              caption=f"captions:{self.name}", device=self.kw["device"],
                              batch_size=self.embed_batch_size, source_ids=source_ids, encoder_obj=self.enc).as_dict()
            res = {**res, "embedding_name": emb.get("name", self.embedding_name), "caption_embedded": emb.get("ok", 0)}
        return res


# ----------------------------------------------------------------------------- the loop
@dataclass
class WorkerStats:
    """What a worker reports (and writes to ``<stage>/workers/<worker>.json``)."""

    worker: str
    stage: str
    board: str
    host: str = HOST
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=_now)
    state: str = "setup"
    model_loads: int = 0
    launch_s: float | None = None  # process start -> run_worker (None: unknown on this platform)
    preloaded: list[str] = field(default_factory=list)  # HEAVY_MODULES already imported when run_worker began
    plan_s: float = 0.0  # adding the planned batches to the board (CLI workers), overlapped with the model load
    setup_s: float = 0.0
    forward_s: float = 0.0
    wall_s: float = 0.0
    busy: float | None = None
    batches_done: list[int] = field(default_factory=list)
    batches_failed: list[int] = field(default_factory=list)
    took_over: list[int] = field(default_factory=list)
    results: dict[str, int] = field(default_factory=lambda: {"total": 0, "ok": 0, "error": 0, "skipped": 0})
    errors: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # per batch: index, start, end (wall clock), counts

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def failed_batch(res: dict) -> bool:
    """A batch fails when it had work and nothing of it succeeded (as a per-batch task fails)."""
    return res.get("total", 0) > 0 and res.get("ok", 0) == 0 and res.get("error", 0) > 0


def run_worker(root: Root | str, work: StageWork, *, board: str = CLI_BOARD, prefetch: int = 1,
               worker_id: str | None = None, plan: Plan | None = None,
               log: Callable[[str], None] | None = None, wait_s: float | None = None,
               idle_s: float | None = None) -> dict[str, Any]:
    """Set ``work`` up once, then claim, process and commit ready batches of ``board`` until none is left.

    ``plan``: batches of source ids to add to the board (or a function returning them), planned while the
    model loads (the CLI adds the root's sources not in a batch yet; the DAG's register task plans them
    instead). ``prefetch``: batches claimed ahead of the one
    in the model (their decode overlaps its forward). Returns the worker's stats (:class:`WorkerStats`)."""
    root = Root(root) if not isinstance(root, Root) else root.ensure()
    root.ensure()
    worker = _Worker(root, work, Board(root, board), worker_id, log or (lambda _msg: None))
    worker.setup(plan)
    return worker.loop(prefetch, WAIT_S if wait_s is None else wait_s, idle_s)


class _Worker:
    """One run of :func:`run_worker`: its board, its stats, and the batches in flight (the pool's threads
    update the stats under one lock)."""

    def __init__(self, root: Root, work: StageWork, b: Board, worker_id: str | None, log: Callable[[str], None]) -> None:
        self.root, self.work, self.b, self.log = root, work, b, log
        self.st = WorkerStats(worker=worker_id or f"{HOST}-{os.getpid()}-{uuid.uuid4().hex[:6]}", stage=work.stage,
                              board=b.name)
        self.t0 = time.perf_counter()
        self.st.launch_s = process_age_s()
        self.st.preloaded = [m for m in HEAVY_MODULES if m in sys.modules]
        self.lock = threading.Lock()
        self.loads0 = 0

    # ------------------------------------------------------------------ setup and stats
    def setup(self, plan: Plan | None) -> None:
        """Load the model once; meanwhile a thread plans the batches, if given (reading the sources table and
        creating the batch files is I/O: seconds of it on a bucket, which the model load need not wait for)."""
        st, work = self.st, self.work
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{work.stage}-plan") as planner:
            planned = planner.submit(self._plan, plan) if plan is not None else None
            self.loads0 = encoder_loads()
            work.setup()
        if planned is not None:
            planned.result()  # (a planning error is raised here, after the model load it overlapped)
        st.setup_s = round(time.perf_counter() - self.t0, 4)
        st.model_loads = work.loads + encoder_loads() - self.loads0
        st.state = "running"
        self.log(f"{work.stage} worker {st.worker}: set up in {st.setup_s:.2f} s ({st.model_loads} model loads)")

    def _plan(self, plan: Plan) -> None:
        t = time.perf_counter()
        self.b.add_batches(plan() if callable(plan) else plan)
        self.st.plan_s = round(time.perf_counter() - t, 4)

    def save(self) -> None:
        """Write the stats (a report: never what fails a batch)."""
        st, work = self.st, self.work
        with self.lock:
            st.forward_s = round(work.clock.busy_s, 6)
            st.wall_s = round(time.perf_counter() - self.t0, 4)
            st.busy = round(st.forward_s / st.wall_s, 6) if st.wall_s else None
            st.model_loads = work.loads + encoder_loads() - self.loads0
            data = st.as_dict()
        with contextlib.suppress(Exception):
            self.b.write_stats(work.stage, st.worker, data)

    # ------------------------------------------------------------------ one batch
    def one(self, index: int, ids: list[str], lease: Lease) -> tuple[dict | None, str | None]:
        """Run one batch (retrying what may pass on a second try), mark it done or failed, release its lease."""
        start = _now()
        try:
            res = self._attempts(ids)
        except Exception as e:  # noqa: BLE001
            err = f"{type(e).__name__}: {str(e)[:300]}"
            self.b.mark(self.work.stage, index, "failed", {"error": err, "worker": self.st.worker, "at": _now()})
            lease.release()
            with self.lock:
                self.st.batches_failed.append(index)
                self.st.errors.append(f"batch {index}: {err}")
                self.st.events.append({"batch": index, "start": start, "end": _now(), "state": "failed"})
            return None, err
        crashpoint("worker-commit")  # (tests: rows committed, the batch not marked yet)
        self._mark(index, start, res, lease)
        return res, None

    def _attempts(self, ids: list[str]) -> dict:
        """``work.run`` of a batch, tried up to :data:`ATTEMPTS` times (the last attempt's error is raised)."""
        for _ in range(ATTEMPTS - 1):
            try:
                return self.work.run(self.root, ids)
            except CurateError:
                raise  # bad input or configuration: another attempt cannot fix it
            except Exception:  # noqa: BLE001  (a worker survives its batches: record, go on)
                time.sleep(1.0)
        return self.work.run(self.root, ids)

    def _mark(self, index: int, start: float, res: dict, lease: Lease) -> None:
        st = self.st
        state = "failed" if failed_batch(res) else "done"
        info = {k: res.get(k) for k in ("total", "ok", "error", "skipped", "seconds")}
        self.b.mark(self.work.stage, index, state, {**info, "worker": st.worker, "at": _now(), "errors": res.get("errors", [])[:5]})
        lease.release()  # after the marker: a batch is never both free and unmarked once its rows are in
        with self.lock:
            (st.batches_done if state == "done" else st.batches_failed).append(index)
            for k in st.results:
                st.results[k] += int(res.get(k) or 0)
            st.errors.extend(f"batch {index}: {e}" for e in res.get("errors", [])[:3])
            del st.errors[20:]
            st.events.append({"batch": index, "start": start, "end": _now(), "state": state, **info})

    # ------------------------------------------------------------------ the loop
    def loop(self, prefetch: int, wait_s: float, idle_s: float | None) -> dict[str, Any]:
        """Claim, run and collect batches until none is left (or none came for ``wait_s``, or ``idle_s`` idle)."""
        work, st, b = self.work, self.st, self.b
        in_flight: dict[Future, int] = {}
        wait_from, poll = time.monotonic(), POLL_S
        with ThreadPoolExecutor(max_workers=1 + max(0, prefetch), thread_name_prefix=f"{work.stage}-batch") as pool:
            while True:
                self._claim_ahead(pool, in_flight, prefetch)
                if in_flight:
                    if self._collect(in_flight):
                        wait_from, poll = time.monotonic(), POLL_S
                    self.save()
                    continue
                left = _left(b, work)
                if left is None:
                    b.finish(work.stage)
                    break
                if idle_s is not None and time.monotonic() - wait_from > idle_s:
                    st.state = "idle"
                    self.save()
                    self.log(f"{work.stage} worker: nothing ready for {idle_s:.0f} s ({left}): giving the slot back")
                    return st.as_dict()
                if time.monotonic() - wait_from > wait_s:
                    st.errors.append(f"gave up after waiting {wait_s:.0f} s for {left}")
                    self.log(f"{work.stage} worker: gave up waiting for {left}")
                    break
                time.sleep(poll)
                poll = min(MAX_POLL_S, poll * 2)
        st.state = "finished"
        self.save()
        self.log(f"{work.stage} worker {st.worker}: {len(st.batches_done)} batches done, {len(st.batches_failed)} failed, "
                 f"busy {st.busy if st.busy is not None else 0:.0%} of {st.wall_s:.1f} s (setup {st.setup_s:.2f} s)")
        return st.as_dict()

    def _claim_ahead(self, pool: ThreadPoolExecutor, in_flight: dict[Future, int], prefetch: int) -> None:
        """Claim ready batches up to 1 + ``prefetch`` in flight."""
        work = self.work
        while len(in_flight) <= max(0, prefetch):
            got = _claim(self.b, work, set(in_flight.values()))
            if got is None:
                break
            index, ids, lease, took_over = got
            if took_over:
                self.st.took_over.append(index)
            self.log(f"{work.stage} batch {index}: claimed ({len(ids)} sources"
                     + (", taken over from a dead worker)" if took_over else ")"))
            in_flight[pool.submit(self.one, index, ids, lease)] = index

    def _collect(self, in_flight: dict[Future, int]) -> bool:
        """Wait (up to 5 s) for batches in flight; log those that finished. Whether any did."""
        work = self.work
        finished, _ = wait(list(in_flight), timeout=5.0, return_when=FIRST_COMPLETED)
        for f in finished:
            index = in_flight.pop(f)
            res, err = f.result()
            if err:
                self.log(f"{work.stage} batch {index}: FAILED: {err}")
            else:
                self.log(f"{work.stage} batch {index}: {'failed' if failed_batch(res) else 'done'}: "
                         f"{res.get('ok', 0)} ok, {res.get('error', 0)} error, {res.get('skipped', 0)} skipped "
                         f"(busy {work.clock.busy_s / max(1e-9, time.perf_counter() - self.t0):.0%} so far)")
        return bool(finished)


def _ready(b: Board, work: StageWork) -> tuple[dict[int, list[str]], set[int]]:
    """(every batch, the indices ready for ``work``: upstream done, this stage neither done nor failed)."""
    batches = b.batches(refresh=True)
    closed = b.marked(work.stage, "done") | b.marked(work.stage, "failed")
    up = set(batches) if work.upstream is None else b.marked(work.upstream, "done")
    return batches, {i for i in batches if i in up and i not in closed}


def _claim(b: Board, work: StageWork, busy: set[int]) -> tuple[int, list[str], Lease, bool] | None:
    """The next ready batch, leased to this worker (a stale lease of a dead worker is taken over)."""
    batches, ready = _ready(b, work)
    for index in sorted(ready - busy):
        rel = b.lease_rel(work.stage, index)
        lease = Lease(b.root.loc, rel)
        stale = b.root.exists(rel)
        if not lease.acquire():
            continue
        if b.root.exists(f"{b.base}/{work.stage}/done/{index:06d}.json") or \
                b.root.exists(f"{b.base}/{work.stage}/failed/{index:06d}.json"):
            lease.release()  # finished by another worker between the listing and the lease
            continue
        return index, batches[index], lease, stale
    return None


def _left(b: Board, work: StageWork) -> str | None:
    """What this worker still waits for (None: nothing, the stage is finished)."""
    batches, ready = _ready(b, work)
    if ready:
        return f"{len(ready)} batches held by other workers"
    if work.upstream is not None and not b.finished(work.upstream):
        return f"upstream stage {work.upstream!r} to finish"
    return None  # no upstream: the batches on the board are the work


def pending_sources(root: Root | str, source_ids: Iterable[str] | None = None) -> list[str]:
    """Ingested (ok) source ids of the root, in table order (``source_ids``: only those)."""
    import pyarrow.compute as pc

    root = Root(root) if not isinstance(root, Root) else root
    t = root.sources.read_arrow(columns=["source_id", "status"])
    ids = t.filter(pc.equal(t["status"], "ok"))["source_id"].to_pylist()
    if source_ids is not None:
        wanted = set(source_ids)
        ids = [s for s in ids if s in wanted]
    return ids


def chunk(ids: Sequence[str], size: int) -> list[list[str]]:
    size = max(1, int(size))
    return [list(ids[i:i + size]) for i in range(0, len(ids), size)]


def stage_work(stage: str, opts: dict[str, Any]) -> StageWork:
    """The :class:`StageWork` of `curate <stage>` with its declared options (:mod:`curate.stages.options`), named on
    the board by what it writes (``embed-<set>``, ``caption-<set>``, ``score``): process and embed into one
    embedding set are one stage there."""
    opts = {k: v for k, v in opts.items() if v is not None}
    if stage == "process":
        work: StageWork = ProcessWork(**opts)
        work.stage = f"embed-{opts.get('name') or opts.get('encoder', 'clip')}"
    elif stage == "embed":
        if opts.get("caption") not in (None, "source"):
            raise CurateError("--worker embeds clips (caption source); generated captions are embedded by "
                              "`curate caption --worker` per batch, or by `curate embed --caption` once")
        opts.pop("caption", None)
        work = EmbedWork(**opts)
        work.stage = f"embed-{opts.get('name') or opts.get('encoder', 'clip')}"
    elif stage == "caption":
        opts.pop("retry_errors", None)
        work = CaptionWork(**opts)
        work.stage = f"caption-{work.name}"
    elif stage == "score":
        if opts.get("caption"):
            raise CurateError("--worker runs the per-clip scorers; give --caption to the whole-root `curate score`")
        work = ScoreWork(opts.get("scorers") or ("technical", "alignment"), encoder=opts.get("encoder"),
                         options=opts.get("options"))
    else:
        raise CurateError(f"no resident worker for stage {stage!r}")
    work.upstream = None  # from a shell the upstream stage already ran: every batch is ready
    return work


def worker_main(stage: str, root: Root | str, opts: dict[str, Any], *, source_ids: Iterable[str] | None = None,
                batch_sources: int = 8, prefetch: int = 1, board: str = CLI_BOARD,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`curate <stage> --worker`: plan the root's ingested sources not in a batch yet into batches of
    ``batch_sources`` (concurrent workers agree), then :func:`run_worker`. Returns a stage-summary-like dict
    (total/ok/error/skipped over this worker's batches, plus its stats)."""
    root = Root(root) if not isinstance(root, Root) else root
    work = stage_work(stage, opts)
    st = run_worker(root, work, board=board, prefetch=prefetch, log=log,
                    plan=lambda: chunk(pending_sources(root, source_ids), batch_sources))
    out = {"stage": stage, **st["results"], "worker": st["worker"], "model_loads": st["model_loads"],
           "launch_s": st["launch_s"], "setup_s": st["setup_s"], "forward_s": st["forward_s"], "wall_s": st["wall_s"], "busy": st["busy"],
           "batches": len(st["batches_done"]), "batches_failed": len(st["batches_failed"]),
           "errors": st["errors"], "stats": st}
    return out
