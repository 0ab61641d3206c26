"""Memory and time of merging one scorer's column into a large scores table (`curate score`'s merge).

    .venv/bin/python bench/bench_score.py [--rows 3000000] [--columns 6]

Writes a scores table of ``--rows`` clips with ``--columns`` float columns under a temporary root, then
merges a new column for every clip (what a scorer run over the whole root does) and prints the peak
RSS added by the merge (over what the process held with the scorer's output in memory) and the time.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--columns", type=int, default=6)
    args = ap.parse_args()
    import numpy as np
    import pyarrow as pa

    from curate.stages.score import merge_into_scores
    from curate.store import Root

    work = tempfile.mkdtemp(prefix="curate-bench-score-")
    try:
        root = Root(work).ensure()
        n, rng = args.rows, np.random.default_rng(0)
        ids = pa.array([f"{i:016x}-{i % 7:05d}-{i % 3:02d}" for i in range(n)])
        base = pa.table({"clip_id": ids, **{f"s{k}": rng.random(n) for k in range(args.columns)}})
        root.scores.rewrite(base.sort_by("clip_id"))
        del base
        new = pa.table({"clip_id": ids, "z": rng.random(n)})
        before = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        t = time.perf_counter()
        merge_into_scores(root, new)
        seconds = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out = {"rows": n, "columns": args.columns + 1, "merge_s": round(seconds, 2),
               "rss_before_mib": round(before), "peak_rss_mib": round(peak), "added_mib": round(peak - before)}
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
