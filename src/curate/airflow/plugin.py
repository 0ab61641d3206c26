"""Airflow UI plugin: read-only "Curation" pages over the configured dataset roots.

A FastAPI app mounted by the Airflow API server at ``/curate`` plus a menu entry (``external_views``):

- ``/curate/``: every root of ``CURATE_ROOTS`` (env, else the Airflow Variable ``curate_roots``; paths
  separated by os.pathsep or commas) with its stage counts and published subsets;
- ``/curate/roots/<root>/subsets/<subset>``: a subset's thresholds, score histograms and dataset card
  (its README.md rendered with raw HTML disabled, so it cannot inject markup);
- ``/curate/roots/<root>/subsets/<subset>/hist/<column>.png``: the histogram of one score column over all
  scored clips, with the subset's filter thresholds marked;
- ``/curate/roots/<root>/subsets/<subset>/search?q=...``: text search over the subset's published clips
  (:func:`curate.query.search.search_subset`; the first search loads the encoder on the API server's CPU).

``<root>`` is an index into the configured roots or a root's directory name; subset and column names
are checked against what exists. No request can name a path, so nothing outside the configured roots is
ever read. Airflow does not authenticate plugin apps: the pages are read-only for that reason.
"""

from __future__ import annotations

import html
import os
import re
from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

URL_PREFIX = "/curate"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
_COLUMN = re.compile(r"[A-Za-z0-9_]{1,100}")
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "frame-ancestors 'self'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

app = FastAPI(title="curate", docs_url=None, redoc_url=None, openapi_url=None)


# ----------------------------------------------------------------------------- roots
def configured_roots() -> list[str]:
    """Local paths (resolved) or URLs (``s3://bucket/prefix``) of the roots the pages show: the DAGs' roots
    (:func:`curate.airflow.settings.configured_roots`: ``CURATE_ROOTS``, else the Variable ``curate_roots``).

    The pages are served by the API server, a server process: there the Task SDK's ``Variable.get`` reads
    the metadata DB. ``airflow api-server`` marks its process so (``_AIRFLOW_PROCESS_CONTEXT=server``); an app
    mounted without it (a test client) is marked for the lookup only."""
    from curate.airflow.settings import configured_roots as roots

    if os.environ.get(_CONTEXT):
        return roots()
    os.environ[_CONTEXT] = "server"
    try:
        return roots()
    finally:
        os.environ.pop(_CONTEXT, None)


_CONTEXT = "_AIRFLOW_PROCESS_CONTEXT"


def _root_names(roots: list[str]) -> list[str]:
    names = [r.rstrip("/").rsplit("/", 1)[-1] or str(i) for i, r in enumerate(roots)]
    return [n if names.count(n) == 1 else str(i) for i, n in enumerate(names)]


def _root(key: str) -> tuple[int, str]:
    """A configured root by index or by (unique) directory name; anything else is a 404."""
    roots = configured_roots()
    if key.isdigit() and int(key) < len(roots):
        return int(key), roots[int(key)]
    names = _root_names(roots)
    if key in names:
        i = names.index(key)
        return i, roots[i]
    raise HTTPException(404, "unknown dataset root")


class SubsetDir:
    """A subset's directory under a root, local or remote (what the pages read from it)."""

    def __init__(self, root: str, name: str) -> None:
        from curate.store import Root

        self.root = Root(root)
        self.rel = self.root.subset_rel(name)

    def exists(self, name: str) -> bool:
        return self.root.exists(f"{self.rel}/{name}")

    def read_text(self, name: str) -> str:
        return self.root.read_bytes(f"{self.rel}/{name}").decode("utf-8", errors="replace")

    def read_json(self, name: str) -> dict:
        return self.root.read_json(f"{self.rel}/{name}", {}) or {}


def _subset(root: str, name: str) -> SubsetDir:
    from curate.store import Root

    if not _NAME.fullmatch(name) or ".." in name or name not in Root(root).subset_names():
        raise HTTPException(404, "unknown subset")
    return SubsetDir(root, name)


def _score_columns(root: str) -> list[str]:
    """Numeric columns of the scores table (the histogrammable ones): the report's
    (:func:`curate.query.report.score_columns`); none before `curate score` ran."""
    from curate.errors import CurateError
    from curate.query.report import score_columns
    from curate.store import Root

    try:
        return score_columns(Root(root))
    except CurateError:
        return []


def _filter_summary(subset_dir: SubsetDir) -> dict[str, Any]:
    try:
        return subset_dir.read_json("filter.json")
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- rendering
def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #1f2933; max-width: 70rem; }}
table {{ border-collapse: collapse; margin: .5rem 0 1rem; }}
th, td {{ border: 1px solid #cbd2d9; padding: .25rem .6rem; text-align: left; }}
th {{ background: #f0f4f8; }}
code, pre {{ background: #f5f7fa; padding: .1rem .3rem; }}
pre {{ padding: .6rem; overflow-x: auto; }}
.hists img {{ max-width: 32rem; margin: .3rem; border: 1px solid #e4e7eb; }}
.card {{ border-top: 2px solid #e4e7eb; margin-top: 1.5rem; }}
.muted {{ color: #7b8794; }}
</style></head><body>
{body}
</body></html>"""
    return HTMLResponse(doc, status_code=status, headers=_HEADERS)


def render_markdown(text: str) -> str:
    """Markdown -> HTML with raw HTML disabled (escaped) and unsafe link schemes refused."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table").render(text)


def _counts_table(counts: dict[str, dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_e(stage)}</td><td>{_e(c.get('ok', 0))}</td><td>{_e(c.get('error', 0))}</td>"
        f"<td>{_e(c.get('pending', 0))}</td><td>{_e(c.get('clips', ''))}</td></tr>"
        for stage, c in counts.items())
    return ("<table><tr><th>stage</th><th>ok</th><th>error</th><th>pending</th><th>clips</th></tr>"
            f"{rows}</table>")


def _busy(b: float | None) -> str:
    return "-" if b is None else f"{b:.0%}"


def _workers_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Resident GPU workers per ``<board>/<stage>`` (:func:`curate.status.worker_status`): batches done / running /
    failed / waiting, model loads and the GPU-busy fraction."""
    rows = "".join(
        f"<tr><td>{_e(k)}</td><td>{_e(w['done'])}/{_e(w['batches'])}</td><td>{_e(w['running'])}</td>"
        f"<td>{_e(w['failed'])}</td><td>{_e(w['waiting'])}</td><td>{_e(w['workers'])}</td>"
        f"<td>{_e(w['model_loads'])}</td><td>{_e(_busy(w['busy']))}</td></tr>"
        for k, w in summaries.items())
    return ("<h3>GPU workers</h3><table><tr><th>run/stage</th><th>batches done</th><th>running</th><th>failed</th>"
            f"<th>waiting</th><th>workers</th><th>model loads</th><th>GPU busy</th></tr>{rows}</table>")


# ----------------------------------------------------------------------------- pages
@app.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    from curate.status import stage_counts, worker_status
    from curate.store import Root

    prefix = request.scope.get("root_path", "")
    roots = configured_roots()
    parts = ["<h1>Curation</h1>"]
    if not roots:
        parts.append("<p>No dataset roots configured: set <code>CURATE_ROOTS</code> (environment of the API "
                     "server) or the Airflow Variable <code>curate_roots</code>.</p>")
    for i, (name, path) in enumerate(zip(_root_names(roots), roots)):
        parts.append(f"<h2>{_e(name)}</h2><p class='muted'><code>{_e(path)}</code></p>")
        if not Root(path).exists(""):
            parts.append("<p>Not created yet.</p>")
            continue
        try:
            parts.append(_counts_table(stage_counts(path)))
            workers = worker_status(path)
            if workers:
                parts.append(_workers_table(workers))
        except Exception as e:  # noqa: BLE001  (a half-written or foreign directory must not break the page)
            parts.append(f"<p>Cannot read stage counts: {_e(type(e).__name__)}: {_e(e)}</p>")
        subsets = Root(path).subset_names()
        if subsets:
            items = []
            for s in subsets:
                summary = _filter_summary(SubsetDir(path, s))
                kept = f" ({_e(summary.get('kept'))} of {_e(summary.get('total'))} clips kept)" if summary else ""
                items.append(f"<li><a href='{_e(prefix)}/roots/{i}/subsets/{_e(s)}'>{_e(s)}</a>{kept}</li>")
            parts.append("<h3>Subsets</h3><ul>" + "".join(items) + "</ul>")
        else:
            parts.append("<p>No subsets yet.</p>")
    return _page("Curation", "\n".join(parts))


@app.get("/roots/{root_key}/subsets/{subset}", response_class=HTMLResponse)
def subset_page(root_key: str, subset: str, request: Request) -> HTMLResponse:
    i, root = _root(root_key)
    d = _subset(root, subset)
    prefix = request.scope.get("root_path", "")
    summary = _filter_summary(d)
    parts = [f"<p><a href='{_e(prefix)}/'>Curation</a> / {_e(_root_names(configured_roots())[i])}</p>",
             f"<h1>{_e(subset)}</h1>"]
    if summary:
        parts.append(f"<p>{_e(summary.get('kept'))} of {_e(summary.get('total'))} scored clips kept.</p>")
        rules = summary.get("rules", [])
        if rules:
            parts.append("<table><tr><th>rule</th><th>column</th><th>condition</th><th>dropped (alone)</th></tr>"
                         + "".join(f"<tr><td>{_e(r.get('name'))}</td><td><code>{_e(r.get('column'))}</code></td>"
                                   f"<td>{_e(r.get('op'))} {_e(r.get('value'))}</td>"
                                   f"<td>{_e(summary.get('dropped_by_rule', {}).get(r.get('name'), ''))}</td></tr>"
                                   for r in rules) + "</table>")
    parts.append(_search_form(prefix, i, subset, root, d))
    cols = _score_columns(root)
    if cols:
        base = f"{_e(prefix)}/roots/{i}/subsets/{_e(subset)}/hist"
        parts.append("<h2>Scores</h2><div class='hists'>" + "".join(
            f"<img src='{base}/{_e(c)}.png' alt='histogram of {_e(c)}' width='512' height='320'>" for c in cols)
            + "</div>")
    if d.exists("README.md"):
        parts.append("<div class='card'>" + render_markdown(d.read_text("README.md")) + "</div>")
    else:
        parts.append("<p>Not published yet (no README.md).</p>")
    return _page(f"{subset} - Curation", "\n".join(parts))


def _encoders(root: str, subset_dir: SubsetDir) -> list[str]:
    """Embedding sets of the root, the one the subset's min_sim rule used first."""
    from curate.embeddings import name_from_column, reserved_columns, sets

    names = sets(root)
    reserved = reserved_columns()
    for r in _filter_summary(subset_dir).get("rules", []):
        name = name_from_column(str(r.get("column", "")), reserved)
        if name in names:
            names.remove(name)
            names.insert(0, name)
    return names


def _search_form(prefix: str, i: int, subset: str, root: str, subset_dir: SubsetDir, q: str = "", k: int = 10,
                 encoder: str | None = None) -> str:
    encoders = _encoders(root, subset_dir)
    if not encoders:
        return ""
    options = "".join(f"<option{' selected' if e == encoder else ''}>{_e(e)}</option>" for e in encoders)
    return (f"<form method='get' action='{_e(prefix)}/roots/{i}/subsets/{_e(subset)}/search'>"
            f"<input name='q' value='{_e(q)}' maxlength='1000' size='50' placeholder='search the clips' required> "
            f"<select name='encoder'>{options}</select> "
            f"<input name='k' type='number' value='{_e(k)}' min='1' max='100'> <button>Search</button></form>")


@app.get("/roots/{root_key}/subsets/{subset}/search", response_class=HTMLResponse)
def search_page(root_key: str, subset: str, request: Request, q: str = "", k: str = "10",
                encoder: str | None = None) -> HTMLResponse:
    from curate.errors import CurateError
    from curate.query.search import search_subset

    i, root = _root(root_key)
    d = _subset(root, subset)
    encoders = _encoders(root, d)
    if encoder is not None and encoder not in encoders:
        raise HTTPException(404, "unknown embedding set")
    encoder = encoder or (encoders[0] if encoders else None)
    prefix = request.scope.get("root_path", "")
    parts = [f"<p><a href='{_e(prefix)}/'>Curation</a> / {_e(_root_names(configured_roots())[i])} / "
             f"<a href='{_e(prefix)}/roots/{i}/subsets/{_e(subset)}'>{_e(subset)}</a></p>",
             f"<h1>Search {_e(subset)}</h1>", _search_form(prefix, i, subset, root, d, q, k, encoder)]
    status = 200
    try:
        if encoder is None:
            raise CurateError("This root has no embeddings to search.")
        hits = search_subset(str(root), subset, q, encoder, k, device="cpu")
    except CurateError as e:
        parts.append(f"<p><strong>{_e(e)}</strong></p>")
        status = 400
    else:
        rows = "".join(
            f"<tr><td>{_e(h.get('rank'))}</td><td>{float(h.get('score') or 0):.3f}</td><td><code>{_e(h.get('clip_id'))}"
            f"</code></td><td>{_e(h.get('caption') or '')}</td><td>{_e(h.get('url') or '')}</td>"
            f"<td>{float(h.get('start_s') or 0):.2f}-{float(h.get('end_s') or 0):.2f} s</td></tr>" for h in hits)
        parts.append("<table><tr><th>rank</th><th>score</th><th>clip</th><th>caption</th><th>source</th>"
                     f"<th>time</th></tr>{rows}</table>" if hits else "<p>No published clip matches.</p>")
    return _page(f"Search {subset} - Curation", "\n".join(parts), status)


@app.get("/roots/{root_key}/subsets/{subset}/hist/{column}.png")
def histogram(root_key: str, subset: str, column: str) -> Response:
    _, root = _root(root_key)
    d = _subset(root, subset)
    if not _COLUMN.fullmatch(column) or column not in _score_columns(root):
        raise HTTPException(404, "unknown score column")
    rules = _filter_summary(d).get("rules", [])
    png = histogram_png(root, column, rules)
    return Response(png, media_type="image/png", headers=_HEADERS)


def histogram_png(root: str, column: str, rules: list[dict], bins: int = 40) -> bytes:
    """The report's histogram (:func:`curate.query.report.histogram_png`), imported when a page asks for one
    (Airflow imports this module in every process)."""
    from curate.query.report import histogram_png as draw

    return draw(root, column, rules, bins)


class CuratePlugin(AirflowPlugin):
    name = "curate"
    fastapi_apps: ClassVar[list[dict]] = [{"app": app, "url_prefix": URL_PREFIX, "name": "curate"}]
    external_views: ClassVar[list[dict]] = [{"name": "Curation", "href": f"{URL_PREFIX}/", "destination": "nav",
                                             "category": "browse", "url_route": "curation"}]
