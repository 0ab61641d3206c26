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


def histogram_png(values: np.ndarray, column: str, thresholds: list[tuple[str, float]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    v = values[~np.isnan(values)]
    ax.hist(v, bins=min(50, max(5, int(np.sqrt(max(len(v), 1))))), color="#4c72b0", alpha=0.85)
    for label, t in thresholds:
        ax.axvline(t, color="#c44e52", linestyle="--", linewidth=1.5)
        ax.annotate(f"{label} {t:g}", xy=(t, ax.get_ylim()[1] * 0.92), color="#c44e52", fontsize=8,
                    ha="left", xytext=(3, 0), textcoords="offset points")
    ax.set_title(f"{column}  (n={len(v)}, missing={int(np.isnan(values).sum())})", fontsize=10)
    ax.set_xlabel(column)
    ax.set_ylabel("clips")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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


def middle_frame(root: Root, clip: dict, src: dict, height: int = 96) -> np.ndarray:
    from curate.media.video import get_frames, open_video

    w, h = int(src["width"]), int(src["height"])
    size = (max(2, int(round(w * height / h / 2)) * 2), height)
    vr = open_video(root.media_file(src["media_path"]), size=size)
    mid = (int(clip["start_frame"]) + int(clip["end_frame"])) // 2
    return get_frames(vr, [mid])[0]


def contact_sheet_png(root: Root, rows: list[tuple[str, list[dict]]], column: str, path: Path) -> None:
    """A grid: one row per group (top / bottom), middle frame of each clip labelled with its score."""
    plt = _plt()
    srcs = {s["source_id"]: s for s in root.sources.read_arrow(
        columns=["source_id", "media_path", "width", "height"]).to_pylist()}
    ncols = max(len(r) for _, r in rows) or 1
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.9 * ncols, 1.7 * len(rows)), dpi=100, squeeze=False)
    for i, (label, clips) in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            ax.axis("off")
            if j >= len(clips):
                continue
            c = clips[j]
            try:
                ax.imshow(middle_frame(root, c, srcs[c["source_id"]]))
            except Exception:  # an undecodable clip still gets its label
                ax.text(0.5, 0.5, "no frame", ha="center", va="center", fontsize=7)
            ax.set_title(f"{label} {c[column]:.3g}", fontsize=7)
    fig.suptitle(f"{column}: best and worst clips", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
        marks = [(r["name"], float(r["value"])) for r in summary.get("rules", [])
                 if r.get("column") == col and isinstance(r.get("value"), (int, float)) and np.isfinite(r["value"])
                 and r.get("kind") != "per_source"]
        name = f"hist_{col}.png"
        histogram_png(v, col, marks, out / name)
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
