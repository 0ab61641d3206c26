"""The inbox of a root (``ROOT/inbox``): lists dropped there are claimed exactly once, by content hash, and run
through ``curate_pipeline`` (the ``curate_inbox`` DAG)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from curate.airflow.settings import INBOX

# ----------------------------------------------------------------------------- inbox
INBOX_SUFFIXES = (".csv", ".jsonl", ".parquet")
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
