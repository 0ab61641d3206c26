"""Fault injection for crash-safety tests: ``CURATE_CRASH_AT=name:n`` SIGKILLs the process the n-th time
it reaches ``crashpoint(name)``. Unset (always, outside tests), a crashpoint is one dictionary lookup."""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def crashpoint(name: str) -> None:
    spec = os.environ.get("CURATE_CRASH_AT")
    if not spec:
        return
    target, _, n = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
