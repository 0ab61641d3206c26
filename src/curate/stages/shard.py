"""Which sources a process works on when many share one root: ``--shard i/n`` and ``--source-ids FILE``.

A source belongs to shard ``int(sha256(source_id)[:16], 16) % n``: the assignment depends only on the
id and ``n``, so ``n`` processes started anywhere (Slurm array tasks, shells, mapped Airflow tasks) each
take a disjoint part of the root and together cover all of it, and a rerun of shard ``i`` takes the same
sources again. A batch owns its sources' clips, embeddings and scores: two shards never write one row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from curate import store  # the lazy package: Root (pyarrow, Lance) loads when a shard reads the sources table
from curate.errors import CurateError


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"3/8"`` -> ``(3, 8)`` (shard 3 of 8, counted from 0); None/"" -> None."""
    if not spec:
        return None
    i, sep, n = str(spec).partition("/")
    try:
        i_, n_ = int(i), int(n)
    except ValueError:
        i_ = n_ = -1
    if not sep or n_ < 1 or not 0 <= i_ < n_:
        raise CurateError(f"--shard {spec!r}: give I/N with 0 <= I < N, e.g. --shard 0/8 ... --shard 7/8 "
                          "(shard I of N processes sharing the root)")
    return i_, n_


def shard_of(source_id: str, n: int) -> int:
    """The shard (0..n-1) that ``source_id`` belongs to among ``n``."""
    return int(hashlib.sha256(source_id.encode()).hexdigest()[:16], 16) % n


def in_shard(ids: Iterable[str], shard: tuple[int, int]) -> list[str]:
    i, n = shard
    return [s for s in ids if shard_of(s, n) == i]


def read_ids(path: str | Path) -> list[str]:
    """Source ids from a file: one per line (blank lines and ``#`` comments ignored)."""
    p = Path(path)
    if not p.is_file():
        raise CurateError(f"--source-ids {str(p)!r} is not a file: give a text file with one source id per line")
    out = []
    for line in p.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def select_sources(root, shard: str | tuple[int, int] | None = None,
                   source_ids_file: str | Path | None = None) -> list[str] | None:
    """The source ids one process works on: all of ``--source-ids FILE`` (or the root's sources) that fall in
    ``--shard i/n``; None when neither is given (the whole root)."""
    shard = parse_shard(shard) if isinstance(shard, str) else shard
    if shard is None and source_ids_file is None:
        return None
    if source_ids_file is not None:
        ids = read_ids(source_ids_file)
    else:
        root = root if isinstance(root, store.Root) else store.Root(root)
        ids = sorted(root.sources.keys())
    return in_shard(ids, shard) if shard is not None else list(dict.fromkeys(ids))
