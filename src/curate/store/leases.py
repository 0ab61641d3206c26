"""Leases: single writers and claims without flock, by conditional create (put-if-absent)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING

from curate.store.storage import Location

# -- leases: single writers and claims without flock ---------------------------------------------------

#: a lease not renewed for this long is stale (its holder died on another machine); same-machine holders
#: are checked by process id at once
LEASE_TTL_S = float(os.environ.get("CURATE_LEASE_TTL_S", "300"))
HOST = socket.gethostname()


def holder_alive(info: dict) -> bool:
    """Whether the holder of a lease (a dict read from its file) may still be working."""
    if info.get("host") == HOST and isinstance(info.get("pid"), int):
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return float(info.get("expires", 0)) > time.time()


class Lease:
    """A small file created conditionally (put-if-absent): whoever created it holds what it names until
    it is released or stops renewing it (every ``ttl / 3`` s, by a daemon thread). A stale lease is taken
    over through one more conditional create, so of two processes that find the same stale lease only
    one takes it."""

    def __init__(self, loc: Location, rel: str, ttl: float = LEASE_TTL_S, renew: bool = True) -> None:
        self.loc, self.rel, self.ttl, self.renew = loc, rel, ttl, renew
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> str:
        return json.dumps({"host": HOST, "pid": os.getpid(), "token": self.token,
                           "expires": time.time() + self.ttl, "holder": f"pid {os.getpid()} on {HOST}"})

    def holder(self) -> dict | None:
        with contextlib.suppress(ValueError):
            return self.loc.read_json(self.rel)
        return {}

    def acquire(self) -> bool:
        for _ in range(3):
            if self.loc.create(self.rel, self._body()):
                self._start()
                return True
            info = self.holder()
            if info is None:  # released in between
                continue
            if holder_alive(info):
                return False
            if not self.loc.create(f"{self.rel}.takeover-{info.get('token', 'none')}", self._body()):
                return False  # someone else is taking this stale lease over
            self.loc.rm(self.rel)
            self.loc.rm(f"{self.rel}.takeover-{info.get('token', 'none')}")
        return False

    def _start(self) -> None:
        if not self.renew:
            return

        def beat():
            while not self._stop.wait(self.ttl / 3):
                with contextlib.suppress(Exception):
                    if (self.holder() or {}).get("token") == self.token:
                        self.loc.write_bytes(self.rel, self._body())

        self._thread = threading.Thread(target=beat, daemon=True, name=f"lease {self.rel}")
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if (self.holder() or {}).get("token") == self.token:
            self.loc.rm(self.rel)



def lock_name(stage: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stage)

if TYPE_CHECKING:
    from curate.store.root import Root


class SharedRun:
    """A process's membership in the concurrent runs of one stage (see :meth:`Root.shared_run`)."""

    first = True  # nothing to repair before others join any more

    def __init__(self, root: Root, stage: str) -> None:
        self.root, self.stage = root, lock_name(stage)
        self._mutex = threading.Lock()
        self._run = Lease(root.loc, f".locks/{self.stage}.runs/{uuid.uuid4().hex}")
        self._run_started = False
        self._claimed: list[str] = []

    def ready(self) -> None:
        """Kept for callers: runs no longer wait for each other."""

    def claim(self, item: str) -> bool:
        """Claim ``item`` for this process until the run ends; False if a live run elsewhere has it.

        A conditional create of ``.locks/<stage>.claims/<item>`` naming this run; a claim whose run is
        gone (its process died on this machine, or its lease expired) is taken over."""
        with self._mutex:
            if not self._run_started:
                self._run.acquire()
                self._run_started = True
            rel = f".locks/{self.stage}.claims/{lock_name(item)}"
            if rel in self._claimed:
                return True
            body = json.dumps({"run": self._run.rel, "host": HOST, "pid": os.getpid()})
            for _ in range(2):
                if self.root.create(rel, body):
                    self._claimed.append(rel)
                    return True
                try:
                    info = self.root.read_json(rel)
                except ValueError:
                    info = {}
                if info is None:
                    continue
                run = None
                with contextlib.suppress(ValueError):
                    run = self.root.read_json(info.get("run") or ".locks/none", None)
                if run is not None and holder_alive(run):
                    return False
                self.root.rm(rel)  # its run is gone: take it over
            return False

    def close(self) -> None:
        for rel in self._claimed:
            self.root.rm(rel)
        if self._run_started:
            self._run.release()


