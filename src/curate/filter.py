"""Filter: select clips by thresholds over stored scores -> ``subsets/<name>/selection.parquet``.

Nothing is recomputed: the scores table is scanned in Arrow record batches (only the columns the
rules need), so memory stays bounded however many clips there are. A clip with a missing score
(null) fails the rule on that score. ``filter.json`` records the rules and how many clips each
one dropped, on its own and in order (the funnel the dataset card shows).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.store import Root, write_bytes_atomic


@dataclass
class Rule:
    name: str
    column: str
    op: str  # ">=" or "<="
    value: float

    def mask(self, batch: pa.RecordBatch) -> np.ndarray:
        col = batch.column(batch.schema.get_field_index(self.column))
        x = col.to_numpy(zero_copy_only=False).astype(np.float64)
        with np.errstate(invalid="ignore"):
            m = x >= self.value if self.op == ">=" else x <= self.value
        return m & ~np.isnan(x)


def sim_column(root: Root, encoder: str | None, columns: list[str]) -> str:
    sims = [c[: -len("_sim")] for c in columns if c.endswith("_sim")]
    if encoder:
        if encoder not in sims:
            raise CurateError(f"No scores for encoder {encoder!r} (scored: {', '.join(sims) or 'none'}). "
                              f"Run `curate embed --encoder {encoder}` and `curate score` first.")
        return f"{encoder}_sim"
    if len(sims) == 1:
        return f"{sims[0]}_sim"
    if not sims:
        raise CurateError("No alignment scores yet: run `curate embed` and `curate score` first.")
    raise CurateError(f"Several encoders were scored ({', '.join(sims)}): pass --encoder NAME.")


def build_rules(root: Root, columns: list[str], *, encoder: str | None = None, min_sim: float | None = None,
                min_duration: float | None = None, max_duration: float | None = None) -> list[Rule]:
    rules = []
    if min_sim is not None:
        rules.append(Rule("min_sim", sim_column(root, encoder, columns), ">=", float(min_sim)))
    if min_duration is not None:
        rules.append(Rule("min_duration", "duration_s", ">=", float(min_duration)))
    if max_duration is not None:
        rules.append(Rule("max_duration", "duration_s", "<=", float(max_duration)))
    for r in rules:
        if r.column not in columns:
            raise CurateError(f"Rule {r.name} needs score column {r.column!r}, which the scores table lacks: "
                              "run `curate score` first.")
    return rules


def filter_clips(root: Root | str, subset: str, *, encoder: str | None = None, min_sim: float | None = None,
                 min_duration: float | None = None, max_duration: float | None = None,
                 batch_size: int = 262144) -> dict[str, Any]:
    """Write the selection of ``subset`` and return its summary (total, kept, dropped per rule)."""
    root = Root(root) if not isinstance(root, Root) else root
    dataset = root.scores.dataset()
    if dataset is None:
        raise CurateError(f"{root.path} has no scores yet: run `curate score --root {root.path}` first.")
    columns = dataset.schema.names
    rules = build_rules(root, columns, encoder=encoder, min_sim=min_sim, min_duration=min_duration,
                        max_duration=max_duration)
    keep_cols = ["clip_id", *dict.fromkeys(c for c in columns if c != "clip_id" and not c.endswith("_error"))]
    out_dir = root.subset_dir(subset)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tmp-selection-{time.time_ns()}.parquet"
    total = kept = 0
    alone = {r.name: 0 for r in rules}
    funnel = {r.name: 0 for r in rules}
    schema = pa.schema([dataset.schema.field(c) for c in keep_cols])
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch in dataset.to_batches(columns=keep_cols, batch_size=batch_size):
            n = batch.num_rows
            total += n
            alive = np.ones(n, dtype=bool)
            for r in rules:
                m = r.mask(batch)
                alone[r.name] += int((~m).sum())
                funnel[r.name] += int((alive & ~m).sum())
                alive &= m
            if alive.any():
                writer.write_batch(batch.filter(pa.array(alive)))
                kept += int(alive.sum())
    tmp.replace(out_dir / "selection.parquet")
    summary = {"subset": subset, "total": total, "kept": kept, "dropped": total - kept,
               "rules": [asdict(r) for r in rules],
               "dropped_by_rule": alone, "funnel": funnel}
    write_bytes_atomic(json.dumps(summary, indent=2), out_dir / "filter.json")
    return summary
