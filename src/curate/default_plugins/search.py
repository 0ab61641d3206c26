"""Built-in `curate search` and `curate eval-retrieval` commands (registered through the same hook a
third-party plugin uses). The commands are module-level functions, the shared output and options come from
:mod:`curate.console`; pyarrow, Lance and the encoders are imported only when a command runs."""

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table as RichTable

from curate import hookimpl
from curate.console import EXISTING_ROOT_OPT, console, guarded, out
from curate.errors import CurateError


@hookimpl
def register_commands(cli):
    """Add `curate search` and `curate eval-retrieval` to the app."""
    cli.command("search")(search_cmd)
    cli.command("eval-retrieval")(eval_retrieval_cmd)


def root_exists(root: str) -> bool:
    """Whether the dataset root ``root`` exists (these commands read one; they never create it)."""
    from curate.store import Root  # pyarrow and Lance load when a command runs, not when it is listed

    return Root(root).exists("")


@guarded
def search_cmd(
    query: str = typer.Argument(..., help="Text to search for, e.g. \"a basketball player performing a slam dunk\"."),
    root: str = EXISTING_ROOT_OPT,
    encoder: str = typer.Option(..., "--encoder", "-e", help="Embedding set to search (ROOT/embeddings/<name>); "
                                                            "the query is embedded with the encoder and options "
                                                            "recorded in its _meta.json."),
    subset: str | None = typer.Option(None, "--subset", help="Only the clips published in this subset."),
    k: int = typer.Option(10, "-k", "--top-k", help="Number of clips to return (1-1000)."),
    device: str = typer.Option("auto", help="Device for the text encoder: auto, cpu, cuda, cuda:1 ..."),
    use_index: bool = typer.Option(False, "--index", help="Use the ANN index (ROOT/index/<name>; built when "
                                                          "missing or stale) whatever the number of clips."),
    exact: bool = typer.Option(False, "--exact", help="Exact search (streams the embeddings table)."),
    index_threshold: int = typer.Option(100_000, help="Without --index/--exact: use the index above this many "
                                                      "candidate clips."),
    nprobe: int = typer.Option(32, help="Index lists visited per query (more: slower, closer to exact)."),
    rebuild_index: bool = typer.Option(False, "--rebuild-index", help="Rebuild the index before searching."),
    contact_sheet: Path | None = typer.Option(None, "--contact-sheet", help="Write a PNG grid of the middle "
                                                                               "frame of each hit here."),
    caption: str | None = typer.Option(None, "--caption", help="Caption shown with each hit: source or "
                                                                "captions:NAME (default: the captions the set's "
                                                                "text embeddings embed)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Find the clips that best match a text query (the set's similarity: cosine, max over queries for query-stack
    encoders, or the encoder's own)."""
    from curate.query.search import search
    from curate.query.sheets import results_sheet as make_sheet

    if exact and (use_index or rebuild_index):
        raise CurateError("--exact excludes --index and --rebuild-index.")
    if not root_exists(root):
        raise CurateError(f"{root} does not exist.")
    method = "index" if (use_index or rebuild_index) and not exact else ("exact" if exact else "auto")
    r = search(root, query, encoder, k=k, subset=subset, method=method, device=device, nprobe=nprobe,
               index_threshold=index_threshold, rebuild_index=rebuild_index, caption=caption,
               log=lambda m: console.print(f"[dim]{escape(m)}[/]"))
    for w in r["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    if contact_sheet is not None:
        p = make_sheet(root, r["results"], contact_sheet)
        r["contact_sheet"] = str(p)
        console.print(f"contact sheet: {escape(str(p))}")
    if json_out:
        out.print_json(json.dumps(r, default=str))
        return
    t = RichTable("rank", "score", "clip_id", "time", "url", "caption",
                  title=f"{escape(query)}  ({r['method']} search over {r['candidates']} clips of "
                        f"{escape(encoder)}{', subset ' + escape(subset) if subset else ''}, {r['seconds']:.2f} s)")
    for h in r["results"]:
        span = f"{h['start_s']:.2f}-{h['end_s']:.2f}s" if h["start_s"] is not None else ""
        t.add_row(str(h["rank"]), f"{h['score']:.4f}", escape(h["clip_id"]), span, escape(str(h["url"] or "")),
                  escape(str(h["caption"] or "")))
    out.print(t)

@guarded
def eval_retrieval_cmd(
    root: str = EXISTING_ROOT_OPT,
    encoder: list[str] = typer.Option([], "--encoder", "-e", help="Embedding set(s) to evaluate, repeatable "
                                                                  "(default: every set under ROOT/embeddings)."),
    subset: str | None = typer.Option(None, "--subset", help="Only the clips published in this subset."),
    max_clips: int | None = typer.Option(None, help="Evaluate on this many clips drawn at random (seeded), "
                                                       "like the 10k-clip galleries of the CLIP4Clip cards."),
    seed: int = typer.Option(0, help="Seed of the --max-clips draw."),
    caption: str | None = typer.Option(None, "--caption", help="Evaluate the sets whose text embeddings are this "
                                                                "caption source (source, or captions:NAME from "
                                                                "`curate embed --caption`)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the table as Markdown (model-card layout)."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Text->video and video->text R@1/5/10, MedianR, MeanR of each embedding set, on clips with captions."""
    from curate.query.retrieval import METRIC_KEYS, evaluate, format_cell, markdown_table

    if not root_exists(root):
        raise CurateError(f"{root} does not exist.")
    ev = evaluate(root, encoder or None, subset=subset, max_clips=max_clips, seed=seed, caption=caption)
    if json_out:
        out.print_json(json.dumps(ev, default=str))
        return
    if markdown:
        out.print(markdown_table(ev), markup=False, highlight=False, soft_wrap=True)
        return
    t = RichTable(title=f"retrieval on {ev['clips']} clips"
                        f"{' of subset ' + escape(subset) if subset else ''} (text->video | video->text)")
    t.add_column("Model")
    t.add_column("clips", justify="right")
    t.add_column("captions", justify="right")
    for d in ("t2v", "v2t"):
        for key in METRIC_KEYS:
            t.add_column(f"{d} {key}", justify="right")
    for r in ev["results"]:
        t.add_row(escape(r["encoder"]), str(r["clips"]), str(r["captions"]),
                  *[format_cell(key, r[d][key]) for d in ("t2v", "v2t") for key in METRIC_KEYS])
    out.print(t)
    if ev["clips"] == 0:
        console.print("[yellow]warning:[/] no clip has a caption and both embeddings in every set.")
