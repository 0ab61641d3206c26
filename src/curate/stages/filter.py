"""Filter: select clips by rules over stored scores -> ``subsets/<name>/selection.parquet``.

Nothing is recomputed: the scores table is scanned in Arrow record batches (only the columns the
rules need), so memory stays bounded however many clips there are. Rules, applied in this order:

1. thresholds on score columns (``min_sim``, durations, ``min_aesthetic``, ``max_dup_sim``...) and
   ``where`` expressions (see :mod:`curate.stages.where`); a missing (null) score fails its rule;
2. ``top_percent``: keep the best P% by one column among the clips that pass 1. Exactly
   ``ceil(P/100 * n)`` clips are kept; ties at the cut are broken by clip id (ascending), so the
   result is deterministic;
3. ``max_per_source``: keep at most N clips per source, the best by ``per_source_by`` (Panda-70M keeps 3).

``filter.json`` records the rules and how many clips each one dropped, on its own (``dropped_by_rule``,
rules 1 only) and in order (``funnel``, every rule): the funnel the dataset card and report show.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.embeddings import embedding_sets_for_caption, names_from_columns, score_column
from curate.errors import CurateError
from curate.progress import StageResult
from curate.stages.options import PRESETS_DIR, STAGES, THRESHOLDS, preset_names
from curate.stages.sources import license_key, source_provenance
from curate.stages.where import Where
from curate.store import Root, write_row_groups
from curate.store.names import caption_source_label, parse_caption_source

#: how selection.parquet is written: dictionary encoding only where values repeat (source_id); on the unique
#: clip ids and the float scores it only costs (3.4 M kept rows: 2.3 s -> 1.0 s to write, measured)
SELECTION_PARQUET = {"compression": "zstd", "use_dictionary": ["source_id"]}
#: bounded read-ahead: pyarrow's defaults keep up to 16 batches x 4 files in flight (>1 GiB on 10M rows)
SCAN = {"batch_readahead": 2, "fragment_readahead": 1}
#: what a preset's filter section may set: every filter option but the subset's name
FILTER_OPTIONS = {o.name for o in STAGES["filter"]} - {"subset"}


@dataclass
class Rule:
    name: str
    column: str
    op: str
    value: Any
    kind: str = "threshold"  # threshold | where | top_percent | per_source | caption | license
    extra: dict = field(default_factory=dict)

    def columns(self) -> list[str]:
        if self.kind == "where":
            return list(self.extra["columns"])
        return [self.column, *(["clip_id"] if self.kind == "top_percent" else [])]

    def mask(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        if self.kind == "where":
            return self.extra["compiled"].mask(cols)
        if self.kind == "license":  # the sources whose licence is listed (extra["compiled"]: their ids)
            return np.isin(cols[self.column].astype(object), self.extra["compiled"])
        x = _float(cols[self.column])
        if self.kind == "caption":  # scored against its generated caption: it has one
            return ~np.isnan(x)
        with np.errstate(invalid="ignore"):
            if self.kind == "top_percent":
                t, cid = self.value, self.extra["tie_clip_id"]
                above = x > t
                if cid is not None:
                    ids = cols["clip_id"]
                    above |= (x == t) & np.array([c <= cid for c in ids], dtype=bool)
                return above & ~np.isnan(x)
            m = {">=": x >= self.value, "<=": x <= self.value, "<": x < self.value, ">": x > self.value}[self.op]
        return m & ~np.isnan(x)

    def public(self) -> dict:
        d = asdict(self)
        d["extra"] = {k: v for k, v in d["extra"].items() if k != "compiled"}
        return d


def _float(a: np.ndarray) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in a], dtype=np.float64) if a.dtype == object else a.astype(np.float64)


def sim_encoders(columns: list[str]) -> list[str]:
    """Embedding sets with an alignment column ``<name>_sim`` (``dup_sim`` is the dedup scorer's, not one)."""
    return names_from_columns(columns)


def sim_column(encoder: str | None, columns: list[str]) -> str:
    sims = sim_encoders(columns)
    if encoder:
        if encoder not in sims:
            raise CurateError(f"No scores for encoder {encoder!r} (scored: {', '.join(sims) or 'none'}). "
                              f"Run `curate embed --encoder {encoder}` and `curate score` first.")
        return score_column(encoder)
    if len(sims) == 1:
        return score_column(sims[0])
    if not sims:
        raise CurateError("No alignment scores yet: run `curate embed` and `curate score` first.")
    raise CurateError(f"Several encoders were scored ({', '.join(sims)}): pass --encoder NAME.")


def caption_rule(root: Root, options: dict[str, Any], columns: list[str]) -> Rule | None:
    """With ``caption="captions:NAME"``: point ``options["encoder"]`` at the embedding set of those captions
    and return the rule that keeps only clips scored against one (an ok generated caption)."""
    cap = parse_caption_source(options.get("caption"))
    if cap is None:
        options.pop("caption", None)
        return None
    label = caption_source_label(cap)
    options["caption"] = label
    sets = [n for n in embedding_sets_for_caption(root, label) if n in sim_encoders(columns)]
    enc = options.get("encoder")
    if enc and enc not in sets:
        raise CurateError(f"--encoder {enc!r} does not score the captions {label!r} (sets that do: "
                          f"{', '.join(sets) or 'none'}).")
    if not enc:
        if not sets:
            raise CurateError(f"No alignment scores of {label!r}: run `curate embed --root {root} --encoder NAME "
                              f"--caption {label}` and `curate score --root {root}` first.")
        if len(sets) > 1:
            raise CurateError(f"Several embedding sets score {label!r} ({', '.join(sets)}): pass --encoder NAME.")
        options["encoder"] = enc = sets[0]
    return Rule("caption", f"{enc}_sim", "has", label, "caption")


def license_rule(root: Root, licenses: str | list[str] | None, columns: list[str]) -> Rule | None:
    """The rule of ``--license``: keep the clips of the sources whose licence (:func:`curate.stages.ingest.
    source_provenance`) is one of ``licenses``, compared by :func:`curate.stages.sources.license_key`."""
    if not licenses:
        return None
    wanted = sorted({license_key(v) for v in ([licenses] if isinstance(licenses, str) else licenses)})
    if "source_id" not in columns:
        raise CurateError("--license needs source_id in the scores table: run `curate score` (technical)")
    rows = root.sources.read_arrow(columns=["source_id", "meta", "info_path"]).to_pylist()
    prov = source_provenance(root, rows)
    ids = np.array(sorted(s for s, p in prov.items() if license_key(p["license"]) in wanted), dtype=object)
    return Rule("license", "source_id", "in", wanted, "license", {"sources": len(ids), "compiled": ids})


def load_preset(preset: str) -> dict[str, Any]:
    """A preset's ``filter`` section: a YAML path, or a name under ``configs/presets`` (curate/presets)."""
    import yaml

    p = Path(preset)
    if not p.exists():
        p = PRESETS_DIR / f"{preset}.yaml"
    if not p.exists():
        raise CurateError(f"No preset {preset!r}: give a YAML path or one of {', '.join(preset_names())}")
    data = yaml.safe_load(p.read_text()) or {}
    section = data.get("filter", data)
    unknown = set(section) - FILTER_OPTIONS - {"subset"}
    if unknown:
        raise CurateError(f"preset {p}: unknown filter keys {sorted(unknown)}")
    section.pop("subset", None)
    return section


def build_rules(columns: list[str], options: dict[str, Any]) -> list[Rule]:
    rules: list[Rule] = []
    sim = None
    for name, (col, op) in THRESHOLDS.items():
        v = options.get(name)
        if v is None:
            continue
        if col == "{sim}":
            sim = sim or sim_column(options.get("encoder"), columns)
            col = sim
        rules.append(Rule(name, col, op, float(v)))
    wheres = options.get("where") or []
    for i, w in enumerate([wheres] if isinstance(wheres, str) else wheres):
        compiled = Where(w, columns)
        rules.append(Rule(f"where[{i}]" if len(wheres) > 1 or not isinstance(wheres, str) else "where", "", "",
                          w, "where", {"columns": compiled.columns, "compiled": compiled}))
    for r in rules:
        missing = [c for c in r.columns() if c not in columns]
        if missing:
            raise CurateError(f"Rule {r.name} needs score column(s) {missing}, which the scores table lacks: "
                              f"run `curate score` with the scorer that writes them (`curate plugins`).")
    return rules


def _cols(batch: pa.RecordBatch, names: Iterable[str]) -> dict[str, np.ndarray]:
    return {n: batch.column(batch.schema.get_field_index(n)).to_numpy(zero_copy_only=False) for n in names}


def filter_clips(root: Root | str, subset: str, *, encoder: str | None = None, caption: str | None = None,
                 min_sim: float | None = None,
                 min_duration: float | None = None, max_duration: float | None = None,
                 where: str | list[str] | None = None, top_percent: float | None = None, top_by: str | None = None,
                 max_per_source: int | None = None, per_source_by: str | None = None,
                 license: str | list[str] | None = None, preset: str | None = None, batch_size: int = 262144,
                 **thresholds: float | None) -> StageResult:
    """Write the selection of ``subset``; the result counts the clips scanned (``total``) and kept (``ok``),
    and its ``extra`` holds the summary ``filter.json`` records: ``subset``, ``kept``, ``dropped``,
    ``rules``, ``dropped_by_rule``, ``funnel``, ``options`` (``result.as_dict()`` has them all).

    The options are declared in :data:`curate.stages.options.STAGES` ``["filter"]`` (thresholds with their
    column and op: :data:`~curate.stages.options.THRESHOLDS`); ``thresholds`` takes the threshold keys
    beyond the durations and ``min_sim`` (``min_aesthetic=4``, ``max_dup_sim=0.98``...).
    ``caption="captions:NAME"`` makes generated captions the subset's captions (see :func:`caption_rule`);
    ``filter.json`` records it in ``options.caption`` for publish. ``license``: keep only the clips whose
    source's licence is listed (see :func:`license_rule`; ``unknown`` keeps the sources without one).
    A ``preset`` (name or YAML path) supplies defaults that explicit arguments override.
    """
    result = StageResult("filter")
    root = Root(root) if not isinstance(root, Root) else root
    unknown = set(thresholds) - set(THRESHOLDS)
    if unknown:
        raise CurateError(f"Unknown filter option(s) {sorted(unknown)} (known: {sorted(FILTER_OPTIONS)})")
    options: dict[str, Any] = load_preset(preset) if preset else {}
    given = dict(encoder=encoder, caption=caption, min_sim=min_sim, min_duration=min_duration, max_duration=max_duration, where=where,
                 top_percent=top_percent, top_by=top_by, max_per_source=max_per_source, per_source_by=per_source_by,
                 license=license, **thresholds)
    options.update({k: v for k, v in given.items() if v is not None and v != []})
    dataset = root.scores.dataset()
    if dataset is None:
        raise CurateError(f"{root} has no scores yet: run `curate score --root {root}` first.")
    columns = dataset.schema.names
    has_caption = caption_rule(root, options, columns)
    by_license = license_rule(root, options.get("license"), columns)
    rules = [r for r in (has_caption, by_license) if r] + build_rules(columns, options)
    top = _top_rule(dataset, rules, options, columns, batch_size)
    cap = _cap_rule(options, columns)
    with root.lock(f"filter-{subset}"), root.local_output(f"{root.subset_rel(subset)}/selection.parquet") as tmp:
        summary = _write_selection(subset, tmp, dataset, rules, top, cap, columns, options, batch_size)
    root.write_bytes(f"{root.subset_rel(subset)}/filter.json", json.dumps(summary, indent=2, default=str))
    result.total, result.ok = summary["total"], summary["kept"]
    result.extra = {k: v for k, v in summary.items() if k != "total"}
    return result.done()


def _write_selection(subset, tmp, dataset, rules, top, cap, columns, options, batch_size) -> dict[str, Any]:
    """One streaming pass: apply the rules batch by batch, write the kept rows (to the local file ``tmp``),
    count drops per rule."""
    keep_cols = ["clip_id", *dict.fromkeys(c for c in columns if c != "clip_id" and not c.endswith("_error"))]
    total = kept = 0
    all_rules = rules + ([top] if top else [])
    alone = {r.name: 0 for r in rules}
    funnel = {r.name: 0 for r in all_rules + ([cap] if cap else [])}
    schema = pa.schema([dataset.schema.field(c) for c in keep_cols])
    need = sorted({c for r in all_rules for c in r.columns()})
    def kept_batches():
        nonlocal total, kept
        for batch in dataset.to_batches(columns=keep_cols, batch_size=batch_size, **SCAN):
            n = batch.num_rows
            total += n
            cols = _cols(batch, need)
            alive = np.ones(n, dtype=bool)
            for r in all_rules:
                m = r.mask(cols)
                if r.kind != "top_percent":
                    alone[r.name] += int((~m).sum())
                funnel[r.name] += int((alive & ~m).sum())
                alive &= m
            if alive.any():
                kept += int(alive.sum())
                yield batch.filter(pa.array(alive))

    with pq.ParquetWriter(tmp, schema, **SELECTION_PARQUET) as writer:
        write_row_groups(writer, kept_batches())  # row groups of a useful size, however selective the rules
    if cap:
        dropped = _apply_cap(tmp, cap)
        funnel[cap.name] = dropped
        kept -= dropped
    return {"subset": subset, "total": total, "kept": kept, "dropped": total - kept,
            "rules": [r.public() for r in all_rules + ([cap] if cap else [])],
            "dropped_by_rule": alone, "funnel": funnel, "options": {k: v for k, v in options.items()}}


def _top_rule(dataset, rules: list[Rule], options: dict, columns: list[str], batch_size: int) -> Rule | None:
    """The percentile cut as a threshold + tie-break clip id, from two streaming passes."""
    p = options.get("top_percent")
    if p is None:
        return None
    p = float(p)
    if not 0 < p <= 100:
        raise CurateError("--top-percent must be in (0, 100]")
    col = options.get("top_by") or sim_column(options.get("encoder"), columns)
    if col not in columns:
        raise CurateError(f"--top-by {col!r} is not a score column ({', '.join(c for c in columns if c != 'clip_id')})")
    need = sorted({c for r in rules for c in r.columns()} | {col})
    values = []
    for batch in dataset.to_batches(columns=need, batch_size=batch_size, **SCAN):
        cols = _cols(batch, need)
        alive = np.ones(batch.num_rows, dtype=bool)
        for r in rules:
            alive &= r.mask(cols)
        x = _float(cols[col])[alive]
        values.append(x[~np.isnan(x)])
    x = np.concatenate(values) if values else np.zeros(0)
    survivors = len(x)  # nulls in the ranked column cannot be ranked: they fail the cut
    k = math.ceil(p / 100.0 * survivors)
    name = f"top_{p:g}%"
    if k == 0:
        return Rule(name, col, ">", float("inf"), "top_percent", {"percent": p, "k": 0, "tie_clip_id": None})
    t = float(np.partition(x, survivors - k)[survivors - k])  # the k-th largest value
    above = int((x > t).sum())
    ties_needed = k - above
    tie_ids: list[str] = []
    for batch in dataset.to_batches(columns=sorted(set(need) | {"clip_id"}), batch_size=batch_size, **SCAN):
        cols = _cols(batch, sorted(set(need) | {"clip_id"}))
        alive = np.ones(batch.num_rows, dtype=bool)
        for r in rules:
            alive &= r.mask(cols)
        v = _float(cols[col])
        tie_ids.extend(cols["clip_id"][alive & (v == t)].tolist())
    tie_ids.sort()
    return Rule(name, col, ">=", t, "top_percent",
                {"percent": p, "k": k, "eligible": survivors, "tie_clip_id": tie_ids[ties_needed - 1]})


def _cap_rule(options: dict, columns: list[str]) -> Rule | None:
    n = options.get("max_per_source")
    if n is None:
        return None
    if "source_id" not in columns:
        raise CurateError("--max-per-source needs source_id in the scores table: run `curate score` (technical)")
    by = options.get("per_source_by") or (sim_column(options.get("encoder"), columns)
                                          if sim_encoders(columns) else "duration_s")
    if by not in columns:
        raise CurateError(f"--per-source-by {by!r} is not a score column")
    return Rule("max_per_source", by, "<=", int(n), "per_source")


def _apply_cap(path: Path, rule: Rule) -> int:
    """Keep the best ``rule.value`` clips of each source in the selection file; returns how many were dropped."""
    t = pq.read_table(path)
    if t.num_rows == 0:
        return 0
    v = pc.fill_null(t[rule.column].cast(pa.float64()), -math.inf)
    order = pa.table({"i": pa.array(range(t.num_rows)), "s": t["source_id"], "v": v, "c": t["clip_id"]}).sort_by(
        [("s", "ascending"), ("v", "descending"), ("c", "ascending")])
    src = order["s"].to_pylist()
    keep, run, prev = [], 0, object()
    for i, s in zip(order["i"].to_pylist(), src):
        run = run + 1 if s == prev else 1
        prev = s
        if run <= rule.value:
            keep.append(i)
    kept = t.take(pa.array(sorted(keep)))
    pq.write_table(kept, path, **SELECTION_PARQUET)
    return t.num_rows - kept.num_rows
