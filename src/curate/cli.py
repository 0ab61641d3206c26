"""The `curate` command line: a thin shell over the stage functions."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table as RichTable

from curate.console import (
    JSON_OPT,
    ROOT_OPT,
    SHARD_HELP,
    SHARD_OPT,
    SOURCE_IDS_OPT,
    RichProgress,
    console,
    finish,
    guarded,
    out,
    print_result,
    status_table,
)
from curate.errors import CurateError

app = typer.Typer(
    name="curate",
    help="Turn raw web video into curated, annotated video-text training sets.\n\n"
         "Stages (each reads and writes Parquet tables under one dataset root): "
         "ingest -> split -> embed -> score -> filter -> publish. Every stage is idempotent: "
         "rerun it and it finishes what is missing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
def _sources(root: str, shard: str | None, source_ids: Path | None) -> list[str] | None:
    from curate.stages.shard import select_sources

    return select_sources(root, shard, source_ids)


_ANNOTATIONS = {"int": int, "float": float, "str": str, "size": str}


def _typer_param(o) -> inspect.Parameter:
    """One declared stage option (:class:`curate.stages.options.Opt`) as a typer option."""
    decls = [o.cli_flag, *([o.short] if o.short else [])]
    extra = {"metavar": o.metavar} if o.metavar else {}
    if o.kind == "bool":  # a flag that switches the default (--retry-errors; --no-local for allow_local)
        ann, default = bool, False if o.invert else bool(o.default)
    elif o.kind in ("list", "dict", "dicts"):
        ann = list[str]
        default = list(o.default) if o.kind == "list" and o.default else []
    else:
        ann = _ANNOTATIONS[o.kind]
        if o.is_nullable or o.kind == "size":
            ann = ann | None
        default = None if o.kind == "size" else o.default
    info = typer.Option(... if o.required else default, *decls, help=o.help, **extra)
    return inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=ann)


def _from_cli(stage: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The typer values of a stage's declared options -> the stage's keyword arguments (checked and coerced
    by the declarations: the command line, YAML and the DAG params take the same values)."""
    from curate.optspec import coerce
    from curate.stages.embed import parse_options
    from curate.stages.options import merge_into, stage_options

    opts = stage_options(stage)
    out: dict[str, Any] = {}
    for name, v in raw.items():
        o = opts[name]
        if o.kind == "bool" and o.invert:
            v = not v
        elif o.kind == "list":
            v = list(v) if v else (None if o.default is None else [])
        elif o.kind == "dict":
            v = parse_options(v) or None
        elif o.kind == "dicts":  # -o scorer.key=value, or key=value with one scorer
            scorers = raw.get("scorers") or []
            nested: dict[str, dict[str, str]] = {}
            for k, x in parse_options(v).items():
                if "." in k:
                    sub, key = k.split(".", 1)
                elif len(scorers) == 1:
                    sub, key = scorers[0], k
                else:
                    raise CurateError(f"Option {k!r}: with several scorers, prefix it with the scorer "
                                      f"(e.g. aesthetic.{k}).")
                nested.setdefault(sub, {})[key] = x
            v = nested
        out[name] = coerce(o, v, o.cli_flag)
    return merge_into(stage, out)


def stage_options(stage: str, after: str = "root"):
    """Give a command the typer options of ``stage``'s declared options (:mod:`curate.stages.options`),
    inserted after its parameter ``after``; the command gets them as ``**opts``, ready for the stage."""
    import functools
    import typing

    from curate.stages.options import STAGES

    declared = [o for o in STAGES[stage] if o.cli]

    def deco(fn):
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        at = [p.name for p in own].index(after) + 1
        generated = [_typer_param(o) for o in declared]
        params = [*own[:at], *generated, *own[at:]]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
        names = {o.name for o in declared}

        @functools.wraps(fn)
        def wrapper(**kw):
            raw = {k: v for k, v in kw.items() if k in names}
            return fn(**{k: v for k, v in kw.items() if k not in names}, **_from_cli(stage, raw))

        wrapper.__signature__ = inspect.Signature(params, return_annotation=None)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer reads the signature above, not fn's
        return wrapper

    return deco


def _worker_opt(name: str):
    from curate.stages.options import WORKER

    return _typer_param(next(o for o in WORKER if o.name == name)).default


WORKER_OPT, BATCH_SOURCES_OPT, PREFETCH_OPT = (_worker_opt(n) for n in ("worker", "batch_sources", "prefetch"))


def _worker(stage: str, root: str, opts: dict, source_ids: list[str] | None, batch_sources: int, prefetch: int,
            json_out: bool) -> None:
    """``--worker``: one resident worker on the root (:func:`curate.workers.worker_main`)."""
    from curate.workers import worker_main

    log = None if json_out else (lambda msg: console.print(escape(msg)))
    finish(worker_main(stage, root, opts, source_ids=source_ids, batch_sources=batch_sources, prefetch=prefetch,
                       log=log), json_out)

# The stage commands below get their stage's options from curate.stages.options (@stage_options): only what
# the command line adds (--root, --shard, --source-ids, --json, --worker) is declared here.


@app.command()
@guarded
@stage_options("ingest")
def ingest(
    sources: list[str] = typer.Argument(..., help="Source list(s): CSV/TSV/JSONL/JSON/Parquet/TXT with a 'url' column "
                                                   "(http(s) URL or local path) and optional 'caption', 'title', "
                                                   "'start_s'/'end_s'; other columns are kept in 'meta'. A bare URL or "
                                                   "video path works too."),
    root: str = ROOT_OPT,
    json_out: bool = JSON_OPT,
    **opts: Any,
) -> None:
    """Register sources and download/copy their media into ROOT/media (yt-dlp for http/https), probing each."""
    from curate.stages.ingest import ingest as run

    finish(run(root, sources, progress=RichProgress(), **opts), json_out)


@app.command()
@guarded
@stage_options("split")
def split(
    root: str = ROOT_OPT,
    shard: str | None = SHARD_OPT,
    source_ids: Path | None = SOURCE_IDS_OPT,
    json_out: bool = JSON_OPT,
    **opts: Any,
) -> None:
    """Detect scenes in every ingested source and write clip rows [start, end) to ROOT/clips."""
    from curate.stages.split import split as run

    finish(run(root, source_ids=_sources(root, shard, source_ids), progress=RichProgress(), **opts), json_out)


@app.command()
@guarded
@stage_options("embed")
def embed(
    root: str = ROOT_OPT,
    shard: str | None = SHARD_OPT,
    source_ids: Path | None = SOURCE_IDS_OPT,
    json_out: bool = JSON_OPT,
    worker: bool = WORKER_OPT,
    batch_sources: int = BATCH_SOURCES_OPT,
    prefetch: int = PREFETCH_OPT,
    **opts: Any,
) -> None:
    """Embed every clip (sampled frames) and its caption with an encoder; writes ROOT/embeddings/<name>."""
    from curate.stages.embed import embed as run

    if worker:
        return _worker("embed", root, opts, _sources(root, shard, source_ids), batch_sources, prefetch, json_out)
    finish(run(root, source_ids=_sources(root, shard, source_ids), progress=RichProgress(), **opts), json_out)


@app.command()
@guarded
@stage_options("caption")
def caption(
    root: str = ROOT_OPT,
    shard: str | None = SHARD_OPT,
    source_ids: Path | None = SOURCE_IDS_OPT,
    json_out: bool = JSON_OPT,
    worker: bool = WORKER_OPT,
    batch_sources: int = BATCH_SOURCES_OPT,
    prefetch: int = PREFETCH_OPT,
    **opts: Any,
) -> None:
    """Caption every clip with a vision-language model (sampled frames + a prompt); writes ROOT/captions/<name>."""
    from curate.stages.caption import caption as run

    ids = _sources(root, shard, source_ids)
    if worker:
        return _worker("caption", root, opts, ids, batch_sources, prefetch, json_out)
    finish(run(root, source_ids=ids, progress=RichProgress(), **opts), json_out)


@app.command()
@guarded
@stage_options("process")
def process(
    root: str = ROOT_OPT,
    shard: str | None = SHARD_OPT,
    source_ids: Path | None = SOURCE_IDS_OPT,
    json_out: bool = JSON_OPT,
    worker: bool = WORKER_OPT,
    batch_sources: int = BATCH_SOURCES_OPT,
    prefetch: int = PREFETCH_OPT,
    **opts: Any,
) -> None:
    """Split and embed in ONE decode pass per source (= split, then embed -o decoder=ffmpeg)."""
    from curate.stages.process import process as run

    if worker:
        return _worker("process", root, opts, _sources(root, shard, source_ids), batch_sources, prefetch, json_out)
    finish(run(root, source_ids=_sources(root, shard, source_ids), progress=RichProgress(), **opts), json_out)


@app.command()
@guarded
@stage_options("score")
def score(
    root: str = ROOT_OPT,
    shard: str | None = typer.Option(None, "--shard", help=SHARD_HELP + " Only per-clip scorers (aesthetic, "
                                                                         "motion, text, nsfw, quality) run per "
                                                                         "shard; the next run without --shard "
                                                                         "merges them."),
    source_ids: Path | None = SOURCE_IDS_OPT,
    json_out: bool = JSON_OPT,
    worker: bool = WORKER_OPT,
    batch_sources: int = BATCH_SOURCES_OPT,
    prefetch: int = PREFETCH_OPT,
    **opts: Any,
) -> None:
    """Compute score columns into ROOT/scores: alignment (<encoder>_sim), technical, aesthetic, motion, dedup,
    text, nsfw, quality."""
    from curate.stages.score import score as run

    if worker:
        return _worker("score", root, opts, _sources(root, shard, source_ids), batch_sources, prefetch, json_out)
    r = run(root, source_ids=_sources(root, shard, source_ids), progress=RichProgress(), **opts)
    left = r.extra.get("root_scope") or []
    if left and not json_out:
        console.print(f"[yellow]not run per shard[/] (they need the whole root): {escape(', '.join(left))}; run "
                      f"`curate score --root {escape(str(root))} -s {' -s '.join(map(escape, left))}` once the shards "
                      "are done")
    finish(r, json_out)


@app.command()
@guarded
@stage_options("dedup")
def dedup(
    root: str = ROOT_OPT,
    plan: bool = typer.Option(False, "--plan", help="Only rank, train the centroids and assign every clip "
                                                    "(stored under embeddings/<name>/_dedup); a plan that still "
                                                    "matches is kept."),
    shard: str | None = typer.Option(None, "--shard", help="Only group I of N of the plan's clusters (e.g. 3/8; I "
                                                           "from 0), written to its own file: N processes or "
                                                           "machines run side by side, a group already written is "
                                                           "skipped."),
    merge: bool = typer.Option(False, "--merge", help="Merge the written groups into dup_sim/dup_of (refused while "
                                                      "a group is missing)."),
    json_out: bool = JSON_OPT,
    **opts: Any,
) -> None:
    """Near-duplicates (dup_sim, dup_of) on one or several workers: --plan once, --shard I/N each, --merge once;
    with no step, all of it here (as `curate score -s dedup`)."""
    from curate.stages.dedup import dedup as run
    from curate.stages.shard import parse_shard

    sh = parse_shard(shard)
    finish(run(root, plan=plan, shard=sh, merge=merge, groups=sh[1] if sh else 1, progress=RichProgress(),
               **opts), json_out)


def print_filter(r) -> None:
    """The filter summary: kept of total, then each rule with what it dropped in order and on its own."""
    d = r.as_dict()
    console.print(f"[bold green]filter[/] subset={escape(d['subset'])} kept {d['kept']} of {d['total']} clips")
    for rule in d["rules"]:
        cond = rule["value"] if rule["kind"] == "where" else f"{rule['column']} {rule['op']} {rule['value']}"
        alone = d["dropped_by_rule"].get(rule["name"])
        console.print(f"  {escape(rule['name'])}: {escape(str(cond))} dropped {d['funnel'][rule['name']]} in order"
                      + (f", {alone} on its own" if alone is not None else ""))


@app.command("filter")
@guarded
@stage_options("filter")
def filter_cmd(root: str = ROOT_OPT, json_out: bool = JSON_OPT, **opts: Any) -> None:
    """Select clips by rules over stored scores (nothing is recomputed) -> ROOT/subsets/<name>/selection.parquet."""
    from curate.stages.filter import filter_clips

    r = filter_clips(root, **opts)
    if json_out:
        out.print_json(json.dumps(r.as_dict(), default=str))
    else:
        print_filter(r)


@app.command()
@guarded
@stage_options("publish")
def publish(
    root: str = ROOT_OPT,
    shard: str | None = typer.Option(None, "--shard", help="Write only WebDataset shards K with K % N == I (e.g. "
                                                           "3/8): N processes cut one subset together; then one run "
                                                           "without --shard writes annotations.parquet and the card."),
    to: str | None = typer.Option(None, "--to", metavar="URL", help="Then copy the published subset to this fsspec "
                                                                  "URL (s3://bucket/prefix, hf://datasets/OWNER/NAME "
                                                                  "with HF_TOKEN, a directory); files already there "
                                                                  "with the same size and checksum are skipped."),
    json_out: bool = JSON_OPT,
    **opts: Any,
) -> None:
    """Cut the kept clips and write WebDataset shards, annotations.parquet and a README.md dataset card."""
    from curate.stages.publish import copy_subset
    from curate.stages.publish import publish as run
    from curate.stages.shard import parse_shard

    if to and shard:
        raise CurateError("--to copies the whole subset: run it without --shard, after the --shard runs.")
    finish(run(root, shard=parse_shard(shard), progress=RichProgress(), **opts), json_out)
    if to:
        finish(copy_subset(root, opts["subset"], to, progress=RichProgress()), json_out)


@app.command()
@guarded
@stage_options("features")
def features(
    root: str = ROOT_OPT,
    show_pred: list[str] | None = typer.Option(None, "--show-pred", help="Texts to classify each frame against: "
                                                                           "prints per-frame softmax probabilities."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary (and predictions) as JSON."),
    **opts: Any,
) -> None:
    """Per-source frame features (num_frames, D) with timestamps_ms and fps, as video_features writes them."""
    from curate.stages.features import features as run
    from curate.stages.features import show_predictions

    r = run(root, progress=RichProgress(), **opts)
    if not show_pred:
        finish(r, json_out)
        return
    encoder = opts.get("encoder", "clip")
    preds = show_predictions(root, show_pred, name=opts.get("name") or encoder, encoder=encoder,
                             options=opts.get("options") or {}, device=opts.get("device", "auto"))
    if json_out:
        out.print_json(json.dumps([{"source_id": s, "timestamps_ms": ts, "probs": p.round(5).tolist(),
                                    "texts": show_pred} for s, ts, p in preds]))
        return
    for sid, ts, p in preds:
        t = RichTable("ms", *[escape(x) for x in show_pred], title=f"source {sid}")
        for ms, row in zip(ts, p):
            best = int(row.argmax())
            t.add_row(f"{ms:.0f}", *[(f"[bold]{v:.3f}[/]" if i == best else f"{v:.3f}") for i, v in enumerate(row)])
        out.print(t)


@app.command()
@guarded
def report(
    root: str = ROOT_OPT,
    subset: str | None = typer.Option(None, "--subset", help="Report on this subset: thresholds marked, funnel, "
                                                                "and the report embedded in its dataset card."),
    top_k: int = typer.Option(6, help="Clips per row of the contact sheets (best and worst by each score)."),
) -> None:
    """Score histograms (thresholds marked), the filter funnel and contact sheets, as PNGs + HTML/Markdown."""
    from curate.query.report import make_report

    r = make_report(root, subset, top_k=top_k)
    console.print(f"[bold green]report[/] {len(r['images'])} images in {escape(r['dir'])}; open {escape(r['page'])}")


@app.command()
@guarded
def run(config: Path = typer.Argument(..., help="YAML file (see configs/); relative paths are relative to it.")) -> None:
    """Run every stage configured in a YAML file, in order."""
    from curate.pipeline import load_config, run_config

    cfg = load_config(config)
    run_config(cfg, RichProgress, on_result=print_result)
    status_table(cfg["root"])


@app.command()
@guarded
def export(
    root: str = ROOT_OPT,
    table: str = typer.Argument(..., help="Table to export: sources, clips, scores, embeddings/<name>, features/<name>."),
    out_path: str = typer.Argument(..., metavar="OUT", help="Parquet file to write (a local path or a URL)."),
    version: int | None = typer.Option(None, "--version", help="Export the table as of this Lance version "
                                                               "(default: the current one)."),
) -> None:
    """Write one table as a plain Parquet file (for tools that read Parquet only)."""
    from curate.store import export_table

    n = export_table(root, table, out_path, version=version)
    console.print(f"[bold green]export[/] {n} rows of {escape(table)} -> {escape(out_path)}")


@app.command()
@guarded
def migrate(root: str = ROOT_OPT) -> None:
    """Convert the tables of a root written by curate before Lance (directories of part-*.parquet) to Lance."""
    from curate.store import migrate as run

    moved = run(root)
    if not moved:
        console.print("[bold green]migrate[/] nothing to do: every table is already in Lance")
    for name, n in moved.items():
        console.print(f"[bold green]migrate[/] {escape(name)}: {n} rows")


@app.command()
@guarded
def compact(
    root: str = ROOT_OPT,
    table: list[str] = typer.Option([], "--table", "-t", help="Only this table (repeatable; default: every table)."),
    keep_versions_s: float | None = typer.Option(None, "--keep-versions-s", help="Remove versions older than this "
                                                 "many seconds (default: CURATE_KEEP_VERSIONS_S, 3600)."),
) -> None:
    """Table maintenance: merge the fragments appends left and remove old versions (run after the writers)."""
    from datetime import timedelta

    from curate.store import maintain

    done = maintain(root, table or None,
                    older_than=timedelta(seconds=keep_versions_s) if keep_versions_s is not None else None)
    console.print(f"[bold green]compact[/] {len(done)} tables: {escape(', '.join(done) or 'none')}")


@app.command()
@guarded
def plugins(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List every registered encoder, splitter, scorer and captioner, with the plugin and package that registered it."""
    from curate.plugins import all_components

    comps = all_components()
    if json_out:
        out.print_json(json.dumps([c.as_dict() for c in comps]))
        return
    t = RichTable("kind", "name", "package", "description", caption="`curate plugins --json` adds each plugin module "
                                                                       "and its options")
    for c in comps:
        t.add_row(c.kind, c.name, c.package, c.description)
    out.print(t)


@app.command()
@guarded
def status(root: str = ROOT_OPT, json_out: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Per stage, counts of ok / error / pending."""
    from curate.status import status_dict
    from curate.store import Root

    if not Root(root).exists(""):
        raise CurateError(f"{root} does not exist.")
    if json_out:
        out.print_json(json.dumps(status_dict(root)))
        return
    status_table(root)


def _register_plugin_commands() -> None:
    from curate.plugins import load_plugins

    load_plugins().hook.register_commands(cli=app)


def command_group():
    """The `curate` command as a click group, plugin commands included (what the CLI reference documents)."""
    import typer.main

    _register_plugin_commands()
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> None:
    _register_plugin_commands()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="curate")


if __name__ == "__main__":
    main()
