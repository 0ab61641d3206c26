"""What every command prints through, and the options commands share: the CLI app, the built-in plugins'
commands and `make demo` import this module, never :mod:`curate.cli` (the app).

``console`` (stderr: progress, summaries, errors) and ``out`` (stdout: tables, JSON), a rich progress bar that
implements :class:`curate.progress.Progress`, a stage summary (:func:`finish`), :func:`guarded` (a
:class:`CurateError` is a message and exit code 2, not a traceback) and the shared ``*_OPT`` options.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from curate.errors import CurateError

__all__ = ["EXISTING_ROOT_OPT", "JSON_OPT", "ROOT_OPT", "SHARD_HELP", "SHARD_OPT", "SOURCE_IDS_OPT", "RichProgress", "console",
           "finish", "guarded", "out", "print_result", "status_table"]

console = Console(stderr=True)
out = Console()

ROOT_OPT = typer.Option(..., "--root", "-r", help="Dataset root: a directory (created if missing) or an fsspec URL "
                                                 "such as s3://bucket/prefix, gs://..., az://...")
#: the root of a command that only reads one (search, eval-retrieval)
EXISTING_ROOT_OPT = typer.Option(..., "--root", "-r",
                                 help="Dataset root: a directory or an fsspec URL (s3://bucket/prefix, ...).")


class RichProgress:
    """Stage progress on a rich bar (stderr); silent when stderr is not a terminal and total is 0."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
        self._task = None

    def start(self, total: int, description: str) -> None:
        if total <= 0:
            return
        self._p.start()
        self._task = self._p.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._p.advance(self._task, n)
            if self._p.tasks[0].finished:
                self._p.stop()


def finish(result, json_out: bool = False) -> None:
    """Print a stage summary; exit 1 only when nothing at all succeeded."""
    d = result.as_dict() if hasattr(result, "as_dict") else result
    if json_out:
        out.print_json(json.dumps(d, default=str))
    else:
        stage = d.get("stage", "filter")
        parts = [f"{k}={d[k]}" for k in ("total", "ok", "error", "skipped") if k in d]
        extra = {k: v for k, v in d.items() if k not in ("stage", "total", "ok", "error", "skipped", "errors", "seconds")}
        line = (" ".join(parts) + (f" in {d['seconds']:.1f}s" if "seconds" in d else "")
                + ("  " + " ".join(f"{k}={v}" for k, v in extra.items() if not isinstance(v, (list, dict))) if extra else ""))
        console.print(f"[bold green]{stage}[/] " + escape(line))
        for e in d.get("errors", [])[:10]:
            console.print(f"  [red]error[/] {escape(str(e))}")
        if d.get("error", 0) > 10:
            console.print(f"  ... {d['error'] - 10} more; see the table's error column (`curate status`).")
    if getattr(result, "failed_entirely", False):
        raise typer.Exit(1)


def guarded(fn):
    """A command that turns a :class:`CurateError` into its message and exit code 2 (an invocation error)."""

    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except CurateError as e:
            console.print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(2) from None

    return wrapper


SHARD_HELP = ("Work on shard I of N only (e.g. 3/8; I from 0): the sources whose id hashes to I, so N processes "
              "(Slurm array tasks, one per GPU) share the root and together do what one run does. Per-batch "
              "work takes no lock and leaves table maintenance to the next run without --shard.")
SOURCE_IDS_HELP = "Work only on the source ids listed in this file (one per line; with --shard: those of the shard)."
JSON_HELP = "Print the summary as JSON."
JSON_OPT = typer.Option(False, "--json", help=JSON_HELP)
SHARD_OPT = typer.Option(None, "--shard", help=SHARD_HELP)
SOURCE_IDS_OPT = typer.Option(None, "--source-ids", help=SOURCE_IDS_HELP)

# The stage commands below get their stage's options from curate.stages.options (@stage_options): only what
# the command line adds (--root, --shard, --source-ids, --json) is declared here.


def print_result(r) -> None:
    """One stage's line in `curate run` and `make demo` (filter: kept of total)."""
    if r.stage == "filter":
        console.print(f"[bold green]filter[/] kept {r.ok} of {r.total} clips")
    else:
        finish(r)


def status_table(root: Any) -> None:
    """`curate status`'s table: per stage, ok / error / pending."""
    from curate.status import stage_counts, worker_status

    t = RichTable("stage", "ok", "error", "pending", title=f"curate status {root}")
    for stage, c in stage_counts(root).items():
        extra = f" ({c['clips']} clips)" if "clips" in c else ""
        t.add_row(stage, f"{c['ok']}{extra}", str(c["error"]), str(c["pending"]))
    out.print(t)
    w = worker_status(root)
    if w:
        t = RichTable("workers: board/stage", "batches done", "running", "failed", "waiting", "workers", "model loads",
                      "setup s", "busy")
        for k, s in w.items():
            t.add_row(k, f"{s['done']}/{s['batches']}", str(s["running"]), str(s["failed"]), str(s["waiting"]),
                      str(s["workers"]), str(s["model_loads"]), f"{s['setup_s']:.1f}",
                      "-" if s["busy"] is None else f"{s['busy']:.0%}")
        out.print(t)
