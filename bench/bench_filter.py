"""`curate filter` over a large scored manifest: wall time and peak RSS.

    .venv/bin/python bench/bench_filter.py --rows 10000000 [--root /tmp/bench-filter | --root s3://bucket/bench]

Writes a synthetic scores table (clip_id, source_id, duration_s, clip_sim, aesthetic, motion,
dup_sim; a Lance fragment per 1M rows) once, then times `curate filter` in a fresh process (as a user runs
it) with thresholds, a --where expression, and a top-30% percentile cut, and reports peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa


def make(root: str, rows: int, part: int = 1_000_000) -> None:
    """The synthetic scores table (Lance, one fragment per ``part`` rows), written once per row count."""
    from curate.store import Root

    r = Root(root)
    table = r.scores
    if table.exists() and table.count() == rows:
        return
    r.rm("scores", recursive=True)
    rng = np.random.default_rng(0)
    for start in range(0, rows, part):
        n = min(part, rows - start)
        ids = np.char.add("c", np.arange(start, start + n).astype(str))
        table.append(pa.table({
            "clip_id": ids, "source_id": np.char.add("s", (np.arange(start, start + n) // 20).astype(str)),
            "duration_s": rng.uniform(0.5, 60, n), "clip_sim": rng.normal(0.28, 0.05, n).round(4),
            "aesthetic": rng.normal(5, 0.8, n), "motion": rng.exponential(1.0, n),
            "dup_sim": rng.uniform(-1, 1, n)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--root", default="/tmp/bench-filter", help="a directory or a URL (s3://bucket/prefix: "
                                                                  "endpoint and keys from AWS_* variables)")
    args = ap.parse_args()
    root = args.root
    make(root, args.rows)
    runs = {
        "thresholds": ["--min-sim", "0.3", "--min-duration", "1", "--max-duration", "120"],
        "where": ["--where", "clip_sim >= 0.3 and (aesthetic > 4.5 or motion < 2)"],
        "top30": ["--min-duration", "1", "--max-duration", "120", "--top-percent", "30"],
    }
    results = {}
    for name, opts in runs.items():
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "curate.cli", "filter", "--root", str(root), "--subset", name, *opts,
                            "--json"], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        # ru_maxrss of the children so far: runs are in increasing order of work, so this is this run's peak
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        kept = json.loads(p.stdout)["kept"]
        results[name] = {"wall_s": round(wall, 2), "peak_rss_mib": round(rss), "kept": kept}
        print(f"{name:11s} wall {wall:5.2f} s  peak RSS {rss:6.0f} MiB  kept {kept:,} of {args.rows:,}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
