"""`curate report`: score distributions, the filter funnel and contact sheets, as PNGs and a page.

Written to ``ROOT/subsets/<name>/report/`` (or ``ROOT/report/`` without a subset): one histogram
per score column with the subset's thresholds marked, ``funnel.png`` (clips left after each rule),
``contact_<column>.png`` (middle frames of the top and bottom clips by that score), ``report.md``
and ``report.html``. The subset's dataset card embeds the report.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.query.sheets import contact_sheet
from curate.store import Root, write_bytes_atomic

SKIP = {"clip_id", "source_id", "dup_of"}
REPORT_START, REPORT_END = "<!-- curate-report -->", "<!-- /curate-report -->"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def score_columns(root: Root) -> list[str]:
    d = root.scores.dataset()
    if d is None:
        raise CurateError(f"{root} has no scores yet: run `curate score` first.")
    import pyarrow as pa

    return [f.name for f in d.schema if f.name not in SKIP and not f.name.endswith("_error")
            and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]


def threshold_rules(rules: list[dict], column: str) -> list[dict]:
    """The rules of a filter summary drawn on ``column``'s histogram: a numeric threshold on that column."""
    return [r for r in rules if r.get("column") == column and r.get("kind") != "per_source"
            and isinstance(r.get("value"), (int, float)) and not isinstance(r.get("value"), bool)
            and np.isfinite(r["value"])]


def histogram_png(root: Root | str, column: str, rules: list[dict], bins: int = 40) -> bytes:
    """PNG (512 x 320) histogram of a score column, streamed in record batches (memory holds one batch), with
    the numeric thresholds of ``rules`` (a filter summary's) on that column marked. No pyplot: thread-safe
    (the Airflow UI plugin serves it too)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    table = (root if isinstance(root, Root) else Root(root)).scores
    rules = threshold_rules(rules, column)

    def values():
        for b in table.iter_batches(columns=[column]):
            x = b.column(0).to_numpy(zero_copy_only=False).astype(np.float64)
            yield x[np.isfinite(x)]

    lo, hi, n = np.inf, -np.inf, 0
    for x in values():
        if x.size:
            lo, hi, n = min(lo, x.min()), max(hi, x.max()), n + x.size
    for r in rules:
        lo, hi = min(lo, float(r["value"])), max(hi, float(r["value"]))
    if not np.isfinite(lo):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    for x in values():
        counts += np.histogram(x, bins=edges)[0]

    fig = Figure(figsize=(6.4, 4.0), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, color="#4c78a8")
    for r in rules:
        ax.axvline(float(r["value"]), color="#d62728", linestyle="--", linewidth=2,
                   label=f"{r.get('name')}: {r.get('op')} {r.get('value')}")
    if rules:
        ax.legend(loc="best", framealpha=0.9)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{column} ({n} clips)")
    ax.set_xlabel(column)
    ax.set_ylabel("clips")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def funnel_png(summary: dict, path: Path) -> None:
    plt = _plt()
    names = ["all"] + list(summary["funnel"])
    left, counts = summary["total"], [summary["total"]]
    for n in summary["funnel"]:
        left -= summary["funnel"][n]
        counts.append(left)
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(names)), dpi=100)
    ax.barh(range(len(names))[::-1], counts, color="#55a868")
    ax.set_yticks(range(len(names))[::-1], names, fontsize=8)
    for i, c in enumerate(counts):
        ax.text(c, len(names) - 1 - i, f" {c}", va="center", fontsize=8)
    ax.set_title(f"{summary['subset']}: clips left after each rule", fontsize=10)
    ax.set_xlabel("clips")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def contact_sheet_png(root: Root, rows: list[tuple[str, list[dict]]], column: str, path: Path) -> None:
    """A grid (:func:`curate.query.sheets.contact_sheet`): one row per group (top / bottom), the middle frame of
    each clip labelled with its score."""
    ncols = max([len(r) for _, r in rows] + [1])
    cells: list[dict | None] = []
    for label, clips in rows:
        cells += [{"clip_id": c["clip_id"], "title": f"{label} {c[column]:.3g}", "subtitle": c["clip_id"]}
                  for c in clips] + [None] * (ncols - len(clips))
    contact_sheet(root, cells, path, columns=ncols, thumb_width=192)


def make_report(root: Root | str, subset: str | None = None, *, top_k: int = 6) -> dict[str, Any]:
    """Write the report files; returns {"dir", "images", "page"}."""
    root = Root(root) if not isinstance(root, Root) else root
    cols = score_columns(root)
    summary: dict[str, Any] = {}
    if subset:
        summary = root.read_json(f"{root.subset_rel(subset)}/filter.json")
        if summary is None:
            raise CurateError(f"Subset {subset!r} does not exist: run `curate filter --subset {subset}` first.")
        out_rel = f"{root.subset_rel(subset)}/report"
    else:
        out_rel = "report"
    with root.local_dir(out_rel) as out:
        md, images = _write_report(root, subset, summary, cols, out, top_k)
    card = f"{root.subset_rel(subset)}/README.md" if subset else None
    if card and root.exists(card):
        embed_in_card(root, card, md, prefix="report/")
    return {"dir": root.url(out_rel), "images": [root.url(f"{out_rel}/{n}") for _, n in images],
            "page": root.url(f"{out_rel}/report.html")}


def _write_report(root: Root, subset: str | None, summary: dict, cols: list[str], out: Path, top_k: int):
    """The report's files, written into the local directory ``out``; returns (markdown, images)."""
    table = root.scores.read_arrow(columns=["clip_id", *cols])
    clips = {c["clip_id"]: c for c in root.clips.read_arrow(
        columns=["clip_id", "source_id", "start_frame", "end_frame"]).to_pylist()}
    images: list[tuple[str, str]] = []
    stats = []
    for col in cols:
        v = np.asarray(pc.fill_null(table[col].cast("float64"), np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
        name = f"hist_{col}.png"
        write_bytes_atomic(histogram_png(root, col, summary.get("rules", [])), out / name)
        images.append((f"Distribution of {col}", name))
        ok = v[~np.isnan(v)]
        stats.append((col, len(ok), *(np.percentile(ok, [0, 25, 50, 75, 100]).tolist() if len(ok) else [np.nan] * 5)))
        if col in ("duration_s", "width", "height", "fps", "aspect") or not len(ok):
            continue
        order = np.argsort(np.where(np.isnan(v), -np.inf, v))
        valid = [i for i in order if not np.isnan(v[i])]
        ids = table["clip_id"].to_pylist()
        rows = [(label, [{**clips[ids[i]], col: v[i]} for i in idx if ids[i] in clips])
                for label, idx in (("top", valid[::-1][:top_k]), ("bottom", valid[:top_k]))]
        sheet = f"contact_{col}.png"
        contact_sheet_png(root, rows, col, out / sheet)
        images.append((f"Top and bottom clips by {col}", sheet))
    if summary:
        funnel_png(summary, out / "funnel.png")
        images.insert(0, ("Filter funnel", "funnel.png"))
    md = _markdown(root, subset, summary, stats, images)
    write_bytes_atomic(md, out / "report.md")
    write_bytes_atomic(_html(subset or str(root), summary, stats, images), out / "report.html")
    return md, images


def _markdown(root: Root, subset: str | None, summary: dict, stats: list, images: list, prefix: str = "") -> str:
    lines = [f"## Report{f': {subset}' if subset else ''}", ""]
    if summary:
        lines += [f"{summary['kept']} of {summary['total']} clips kept.", ""]
    lines += ["| score | n | min | p25 | median | p75 | max |", "|---|---|---|---|---|---|---|"]
    lines += [f"| `{c}` | {n} | " + " | ".join(f"{x:.4g}" for x in q) + " |" for c, n, *q in stats]
    lines.append("")
    for title, name in images:
        lines += [f"### {title}", "", f"![{title}]({prefix}{name})", ""]
    return "\n".join(lines) + "\n"


def _html(title: str, summary: dict, stats: list, images: list) -> str:
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{n}</td>" + "".join(f"<td>{x:.4g}</td>" for x in q) + "</tr>"
                   for c, n, *q in stats)
    imgs = "".join(f"<h3>{html.escape(t)}</h3><img src='{html.escape(n)}' alt='{html.escape(t)}'>" for t, n in images)
    kept = f"<p>{summary['kept']} of {summary['total']} clips kept.</p>" if summary else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>curate report: {html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:2px 8px}"
            "img{max-width:100%}</style></head>"
            f"<body><h1>curate report: {html.escape(title)}</h1>{kept}<table><tr><th>score</th><th>n</th><th>min</th>"
            f"<th>p25</th><th>median</th><th>p75</th><th>max</th></tr>{rows}</table>{imgs}</body></html>")


def embed_in_card(root: Root, card: str, report_md: str, prefix: str) -> None:
    """Put (or replace) the report section in a dataset card (``card``: its path under the root), image
    paths relative to the card."""
    text = root.read_text(card)
    body = report_md.replace("](", f"]({prefix}")
    section = f"{REPORT_START}\n{body}{REPORT_END}\n"
    if REPORT_START in text and REPORT_END in text:
        a, b = text.index(REPORT_START), text.index(REPORT_END) + len(REPORT_END) + 1
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    root.write_bytes(card, text)
