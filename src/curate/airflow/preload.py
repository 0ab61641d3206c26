"""Celery preloading (opt-in): a gpu worker imports torch and the encoder packages once, in its main process,
before Celery forks its pool, so every slot task's process starts with them imported.

Airflow 3 runs a Celery task in a pool child, whose supervisor forks the task process: both inherit what the
worker's main process imported. Celery imports the modules of its ``imports`` setting in that main process
before it starts the pool; :mod:`curate.airflow.celery_config` is the provider's default Celery configuration
plus this module there. Set on the gpu workers only::

    AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=curate.airflow.celery_config.CELERY_CONFIG
    CURATE_CELERY_PRELOAD=torch,torchvision,open_clip    # or 1: DEFAULT_MODULES
    airflow celery worker -q gpu -c 1

Only imports: no tensor is made and no model built here. A CUDA context cannot cross a fork, so
:func:`preload` raises if an import initialised CUDA; and a process that ran a parallel torch operation before
forking leaves its children hanging at their first one (OpenMP's thread team does not survive the fork),
while a process that only imported torch forks children that run fine (``tests/test_preload.py`` checks it).
Importing torch starts one helper thread when OpenMP may use several (none with ``OMP_NUM_THREADS=1``); the
children do not inherit it and do not need it. The worker's log gets one line: what was preloaded, in how
long, the process's thread count, whether CUDA is initialised.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import time

#: what ``CURATE_CELERY_PRELOAD=1`` imports: most of a CLIP-type slot's start-up (torchvision: open_clip needs it)
DEFAULT_MODULES = ("torch", "torchvision", "open_clip")
OFF = ("", "0", "false", "no", "off", "none")


def modules(value: str | None = None) -> list[str]:
    """The modules to preload: ``CURATE_CELERY_PRELOAD`` (or ``value``), comma-separated; ``1`` / ``default``:
    :data:`DEFAULT_MODULES`; unset / ``0``: none."""
    value = os.environ.get("CURATE_CELERY_PRELOAD", "") if value is None else value
    if value.strip().lower() in OFF:
        return []
    if value.strip().lower() in ("1", "true", "yes", "on", "default"):
        return list(DEFAULT_MODULES)
    return [m.strip() for m in value.split(",") if m.strip()]


def threads() -> int:
    """Threads of this process (Linux ``/proc``; elsewhere the Python threads only)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def preload(names: list[str]) -> dict[str, float]:
    """Import ``names`` (seconds each); raise if that initialised CUDA (the forked task processes could not
    use it)."""
    took: dict[str, float] = {}
    for name in names:
        t = time.perf_counter()
        importlib.import_module(name)
        took[name] = round(time.perf_counter() - t, 3)
    if cuda_initialized():
        raise RuntimeError(f"preloading {', '.join(names)} initialised CUDA before the worker forks its pool")
    gc.freeze()  # (as Airflow's own preload: the imported objects are not copied into each child by gc)
    return took


#: what this worker preloaded (module -> import seconds): empty when off
PRELOADED: dict[str, float] = preload(names) if (names := modules()) else {}
if PRELOADED:  # (the worker's log: Celery has not set up logging yet when it imports this)
    print(f"curate: preloaded {', '.join(PRELOADED)} in {sum(PRELOADED.values()):.1f} s (pid {os.getpid()}, "
          f"threads {threads()}, CUDA initialised: {cuda_initialized()})", file=sys.stderr, flush=True)
