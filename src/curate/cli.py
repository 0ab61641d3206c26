"""The `curate` command line: a thin shell over the stage functions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

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
console = Console(stderr=True)
out = Console()

ROOT_OPT = typer.Option(..., "--root", "-r", help="Dataset root: a directory (created if missing) or an fsspec URL "
                                                 "such as s3://bucket/prefix, gs://..., az://...")


class RichProgress:
    """Stage progress on a rich bar (stderr); silent when stderr is not a terminal and total is 0."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
        self._task = None

    def start(self, total: int, description: str) -> None:
        if total <= 0:
            return
        self._p.start()
        self._task = self._p.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._p.advance(self._task, n)
            if self._p.tasks[0].finished:
                self._p.stop()


def finish(result, json_out: bool = False) -> None:
    """Print a stage summary; exit 1 only when nothing at all succeeded."""
    d = result.as_dict() if hasattr(result, "as_dict") else result
    if json_out:
        out.print_json(json.dumps(d, default=str))
    else:
        stage = d.get("stage", "filter")
        parts = [f"{k}={d[k]}" for k in ("total", "ok", "error", "skipped") if k in d]
        extra = {k: v for k, v in d.items() if k not in ("stage", "total", "ok", "error", "skipped", "errors", "seconds")}
        line = (" ".join(parts) + (f" in {d['seconds']:.1f}s" if "seconds" in d else "")
                + ("  " + " ".join(f"{k}={v}" for k, v in extra.items() if not isinstance(v, (list, dict))) if extra else ""))
        console.print(f"[bold green]{stage}[/] " + escape(line))
        for e in d.get("errors", [])[:10]:
            console.print(f"  [red]error[/] {escape(str(e))}")
        if d.get("error", 0) > 10:
            console.print(f"  ... {d['error'] - 10} more; see the table's error column (`curate status`).")
    if getattr(result, "failed_entirely", False):
        raise typer.Exit(1)


def guarded(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except CurateError as e:
            console.print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(2) from None

    return wrapper


SHARD_HELP = ("Work on shard I of N only (e.g. 3/8; I from 0): the sources whose id hashes to I, so N processes "
              "(Slurm array tasks, one per GPU) share the root and together do what one run does. Per-batch "
              "work takes no lock and leaves table maintenance to the next run without --shard.")
SOURCE_IDS_HELP = "Work only on the source ids listed in this file (one per line; with --shard: those of the shard)."


def _sources(root: str, shard: str | None, source_ids: Path | None) -> list[str] | None:
    from curate.stages.shard import select_sources

    return select_sources(root, shard, source_ids)


def _size(v: str | None) -> int | None:
    if not v:
        return None
    v = v.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if v[-1:] in mult:
        return int(float(v[:-1]) * mult[v[-1]])
    if v.endswith("B") and v[-2:-1] in mult:
        return int(float(v[:-2]) * mult[v[-2]])
    return int(v)


@app.command()
@guarded
def ingest(
    sources: list[str] = typer.Argument(..., help="Source list(s): CSV/TSV/JSONL/JSON/Parquet/TXT with a 'url' column "
                                                   "(http(s) URL or local path) and optional 'caption', 'title', "
                                                   "'start_s'/'end_s'; other columns are kept in 'meta'. A bare URL or "
                                                   "video path works too."),
    root: str = ROOT_OPT,
    workers: int = typer.Option(4, help="Parallel downloads."),
    max_height: int | None = typer.Option(None, help="Download the best format no taller than this (e.g. 720)."),
    max_filesize: str | None = typer.Option(None, help="Skip files larger than this (bytes, or 500M / 2G)."),
    max_duration: float | None = typer.Option(None, help="Mark sources longer than this many seconds as errors."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Re-queue error rows whose kind is retryable "
                                                                     "(network, timeout, rate_limited, bot_check)."),
    no_local: bool = typer.Option(False, "--no-local", help="Refuse local paths and file:// URLs."),
    allow_dir: list[str] = typer.Option([], "--allow-dir", help="Only read local files under these directories."),
    timeout: float = typer.Option(30.0, help="Network timeout per request, seconds."),
    retries: int = typer.Option(2, help="Retries of transient download errors (exponential backoff with jitter)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Register sources and download/copy their media into ROOT/media (yt-dlp for http/https), probing each."""
    from curate.stages.ingest import ingest as run

    r = run(root, sources, workers=workers, max_height=max_height, max_filesize=_size(max_filesize),
            max_duration=max_duration, retry_errors=retry_errors, allow_local=not no_local,
            local_dirs=allow_dir or None, socket_timeout=timeout, retries=retries, progress=RichProgress())
    finish(r, json_out)


@app.command()
@guarded
def split(
    root: str = ROOT_OPT,
    detector: str = typer.Option("auto", help="Splitter plugin: auto (transnetv2 with a GPU, else content), transnetv2 "
                                              "(TransNetV2, dissolves kept out of clips), content (ContentDetector), "
                                              "adaptive, threshold, none (whole source), or a third-party one "
                                              "(`curate plugins`)."),
    threshold: float | None = typer.Option(None, help="Detector threshold (transnetv2 0.5, content 27, adaptive 3, "
                                                      "threshold 12)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Detector option key=value (e.g. min_scene_len=10, "
                                                                 "device=cpu, weights=PATH)."),
    min_clip_s: float = typer.Option(1.0, help="Drop scenes shorter than this (seconds)."),
    max_clip_s: float = typer.Option(60.0, help="Cut scenes longer than this into equal pieces (seconds; 0 = no limit)."),
    shard: str | None = typer.Option(None, "--shard", help=SHARD_HELP),
    source_ids: Path | None = typer.Option(None, "--source-ids", help=SOURCE_IDS_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Detect scenes in every ingested source and write clip rows [start, end) to ROOT/clips."""
    from curate.stages.embed import parse_options
    from curate.stages.split import split as run

    opts = parse_options(option)
    if threshold is not None:
        opts["threshold"] = threshold
    r = run(root, source_ids=_sources(root, shard, source_ids), detector=detector, options=opts,
            min_clip_s=min_clip_s, max_clip_s=max_clip_s or None, progress=RichProgress())
    finish(r, json_out)


@app.command()
@guarded
def embed(
    root: str = ROOT_OPT,
    encoder: str = typer.Option("clip", "--encoder", "-e", help="Encoder plugin name (`curate plugins`)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Encoder option key=value, repeatable "
                                                                 "(clip: model=ViT-B-32 weights=openai frames=8)."),
    name: str | None = typer.Option(None, help="Name of this embedding set (default: the encoder name); scores "
                                                  "become <name>_sim. Use it to compare two configurations."),
    caption: str = typer.Option("source", "--caption", help="Text to embed as each clip's caption: source (the "
                                                             "source list's) or captions:NAME (generated by `curate "
                                                             "caption`; --name then defaults to <encoder>_<NAME> and "
                                                             "clip vectors are copied from a set with the same "
                                                             "encoder and options)."),
    device: str = typer.Option("auto", help="auto (cuda when available), cpu, cuda, cuda:1 ..."),
    batch_size: int = typer.Option(32, help="Clips per forward pass."),
    workers: int = typer.Option(2, help="Decoder threads running ahead of the model."),
    shard: str | None = typer.Option(None, "--shard", help=SHARD_HELP),
    source_ids: Path | None = typer.Option(None, "--source-ids", help=SOURCE_IDS_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Embed every clip (sampled frames) and its caption with an encoder; writes ROOT/embeddings/<name>."""
    from curate.stages.embed import embed as run
    from curate.stages.embed import parse_options

    r = run(root, encoder, options=parse_options(option), name=name, caption=caption, device=device,
            batch_size=batch_size, workers=workers, source_ids=_sources(root, shard, source_ids),
            progress=RichProgress())
    finish(r, json_out)


@app.command()
@guarded
def caption(
    root: str = ROOT_OPT,
    captioner: str = typer.Option("hf", "--captioner", "-c", help="Captioner plugin name (`curate plugins`)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Captioner option key=value, repeatable (hf: "
                                                                 "weights=Qwen/Qwen2.5-VL-3B-Instruct frames=8 "
                                                                 "max_new_tokens=128 prompt=...)."),
    name: str | None = typer.Option(None, help="Name of this captions set (default: the captioner name); later "
                                                  "stages use it as --caption captions:<name>."),
    device: str = typer.Option("auto", help="auto (cuda when available), cpu, cuda, cuda:1 ..."),
    batch_size: int = typer.Option(8, help="Clips per generate call."),
    workers: int = typer.Option(2, help="Decoder threads running ahead of the model."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Caption again the clips whose row is an error "
                                                                     "(degenerate output, failed generation)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Caption every clip with a vision-language model (sampled frames + a prompt); writes ROOT/captions/<name>."""
    from curate.stages.caption import caption as run
    from curate.stages.embed import parse_options

    r = run(root, captioner, options=parse_options(option), name=name, device=device, batch_size=batch_size,
            workers=workers, retry_errors=retry_errors, progress=RichProgress())
    finish(r, json_out)


@app.command()
@guarded
def process(
    root: str = ROOT_OPT,
    encoder: str = typer.Option("clip", "--encoder", "-e", help="Encoder plugin name (`curate plugins`)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Encoder option key=value, repeatable."),
    name: str | None = typer.Option(None, help="Name of the embedding set (default: the encoder name)."),
    detector: str = typer.Option("auto", help="auto (transnetv2 with a GPU, else content), transnetv2, content, "
                                              "adaptive or threshold."),
    threshold: float | None = typer.Option(None, help="Detector threshold (transnetv2 0.5, content 27, adaptive 3, "
                                                      "threshold 12)."),
    detector_option: list[str] = typer.Option([], "--detector-option", help="Detector option key=value, repeatable "
                                                                          "(as `curate split -o`: device=cpu ...)."),
    min_clip_s: float = typer.Option(1.0, help="Drop scenes shorter than this (seconds)."),
    max_clip_s: float = typer.Option(60.0, help="Cut scenes longer than this into equal pieces (seconds; 0 = no limit)."),
    device: str = typer.Option("auto", help="auto (cuda when available), cpu, cuda, cuda:1 ..."),
    batch_size: int = typer.Option(32, help="Clips per forward pass."),
    workers: int = typer.Option(1, help="Sources decoded at a time (each its own ffmpeg and detector thread); "
                                        "on a many-core GPU node about cores/4 keeps the encoder fed."),
    shard: str | None = typer.Option(None, "--shard", help=SHARD_HELP),
    source_ids: Path | None = typer.Option(None, "--source-ids", help=SOURCE_IDS_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Split and embed in ONE decode pass per source (= split, then embed -o decoder=ffmpeg)."""
    from curate.stages.embed import parse_options
    from curate.stages.process import process as run

    det_opts = parse_options(detector_option)
    if threshold is not None:
        det_opts["threshold"] = threshold
    r = run(root, encoder, options=parse_options(option), name=name, detector=detector,
            detector_options=det_opts or None, min_clip_s=min_clip_s,
            max_clip_s=max_clip_s or None, device=device, batch_size=batch_size, workers=workers,
            source_ids=_sources(root, shard, source_ids), progress=RichProgress())
    finish(r, json_out)


@app.command()
@guarded
def score(
    root: str = ROOT_OPT,
    encoder: str | None = typer.Option(None, "--encoder", "-e", help="Only this embedding set (default: all)."),
    scorer: list[str] = typer.Option(["technical", "alignment"], "--scorer", "-s",
                                     help="Scorer plugins to run (repeatable): technical, alignment, aesthetic, "
                                          "motion, dedup, text (on-screen text), nsfw, quality, or third-party "
                                          "ones."),
    option: list[str] = typer.Option([], "--option", "-o", help="Scorer option scorer.key=value (e.g. "
                                                                 "aesthetic.recipe=opensora, dedup.by=aesthetic); "
                                                                 "plain key=value when one scorer is given."),
    caption: str | None = typer.Option(None, "--caption", help="Alignment only of the embedding sets whose text "
                                                                "embeddings are this caption source (source, or "
                                                                "captions:NAME embedded with `curate embed --caption`)."),
    shard: str | None = typer.Option(None, "--shard", help=SHARD_HELP + " Only per-clip scorers (aesthetic, "
                                                                         "motion, text, nsfw, quality) run per "
                                                                         "shard; the next run without --shard "
                                                                         "merges them."),
    source_ids: Path | None = typer.Option(None, "--source-ids", help=SOURCE_IDS_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Compute score columns into ROOT/scores: alignment (<encoder>_sim), technical, aesthetic, motion, dedup,
    text, nsfw, quality."""
    from curate.stages.embed import parse_options
    from curate.stages.score import score as run

    opts: dict[str, dict[str, str]] = {}
    for k, v in parse_options(option).items():
        if "." in k:
            name, key = k.split(".", 1)
        elif len(scorer) == 1:
            name, key = scorer[0], k
        else:
            raise CurateError(f"Option {k!r}: with several scorers, prefix it with the scorer (e.g. aesthetic.{k}).")
        opts.setdefault(name, {})[key] = v
    r = run(root, scorers=scorer, encoder=encoder, options=opts, caption=caption, source_ids=_sources(root, shard, source_ids),
            progress=RichProgress())
    left = r.extra.get("root_scope") or []
    if left and not json_out:
        console.print(f"[yellow]not run per shard[/] (they need the whole root): {escape(', '.join(left))}; run "
                      f"`curate score --root {escape(str(root))} -s {' -s '.join(map(escape, left))}` once the shards "
                      "are done")
    finish(r, json_out)


@app.command("filter")
@guarded
def filter_cmd(
    root: str = ROOT_OPT,
    subset: str = typer.Option(..., "--subset", help="Name of the subset to create (ROOT/subsets/<name>)."),
    preset: str | None = typer.Option(None, help="Preset name (internvid-flt, internvid-aes, panda, opensora, "
                                                    "clean-content) or a YAML path; explicit options override it."),
    min_sim: float | None = typer.Option(None, help="Keep clips with <encoder>_sim >= this."),
    encoder: str | None = typer.Option(None, "--encoder", "-e", help="Which <encoder>_sim, when several were scored."),
    caption: str | None = typer.Option(None, "--caption", help="captions:NAME: the generated captions are the "
                                                                "subset's captions: --min-sim applies to the embedding "
                                                                "set of those captions, clips without one are dropped, "
                                                                "and publish puts them in the caption field."),
    min_duration: float | None = typer.Option(None, help="Keep clips at least this long (seconds)."),
    max_duration: float | None = typer.Option(None, help="Keep clips at most this long (seconds)."),
    min_aesthetic: float | None = typer.Option(None, help="Keep aesthetic >= this (1-10; InternVid-Aes: 4)."),
    min_motion: float | None = typer.Option(None, help="Keep motion >= this (px/frame at 160 px; still clips ~0)."),
    max_motion: float | None = typer.Option(None, help="Keep motion <= this."),
    max_dup_sim: float | None = typer.Option(None, help="Drop a clip when a better clip is at least this similar "
                                                           "(needs the dedup scorer; Open-Sora: 0.98)."),
    min_width: int | None = typer.Option(None, help="Keep sources at least this wide (px)."),
    min_height: int | None = typer.Option(None, help="Keep sources at least this tall (px)."),
    min_aspect: float | None = typer.Option(None, help="Keep width/height >= this."),
    max_aspect: float | None = typer.Option(None, help="Keep width/height <= this."),
    min_fps: float | None = typer.Option(None, help="Keep sources with fps >= this."),
    max_text_area: float | None = typer.Option(None, help="Keep text_area <= this: fraction of the frame covered by "
                                                             "on-screen text, 0-1 (text scorer; 0.02 drops subtitles)."),
    max_text_boxes: int | None = typer.Option(None, help="Keep clips with at most this many text boxes in a frame "
                                                            "(text scorer; Open-Sora counts boxes)."),
    max_nsfw: float | None = typer.Option(None, help="Keep nsfw <= this (nsfw scorer, 0-1; 0.5 drops detected "
                                                        "nudity)."),
    min_sharpness: float | None = typer.Option(None, help="Keep sharpness >= this (quality scorer: variance of the "
                                                             "Laplacian at 256 px; blurred clips score tens)."),
    min_brightness: float | None = typer.Option(None, help="Keep brightness >= this (quality scorer, mean luma 0-1)."),
    max_brightness: float | None = typer.Option(None, help="Keep brightness <= this."),
    min_contrast: float | None = typer.Option(None, help="Keep contrast >= this (quality scorer, RMS contrast 0-1)."),
    max_black_frac: float | None = typer.Option(None, help="Keep clips with at most this fraction of black frames."),
    max_frozen_frac: float | None = typer.Option(None, help="Keep clips with at most this fraction of frozen "
                                                               "(near-identical) consecutive sampled frames."),
    max_letterbox: float | None = typer.Option(None, help="Keep clips whose letterbox bars take at most this fraction "
                                                             "of the height."),
    max_pillarbox: float | None = typer.Option(None, help="Keep clips whose pillarbox bars take at most this fraction "
                                                             "of the width."),
    where: list[str] = typer.Option([], "--where", help="Expression over score columns, repeatable, e.g. "
                                                         "\"clip_sim >= 0.3 and (aesthetic > 4.5 or motion < 2)\"."),
    top_percent: float | None = typer.Option(None, help="Keep the best P%% by --top-by among clips passing the other "
                                                           "thresholds (exactly ceil(P/100*n); ties by clip id)."),
    top_by: str | None = typer.Option(None, help="Column for --top-percent (default: the alignment score)."),
    max_per_source: int | None = typer.Option(None, help="Keep at most N clips per source (Panda-70M: 3)."),
    per_source_by: str | None = typer.Option(None, help="Column ranking clips within a source (default: alignment)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Select clips by rules over stored scores (nothing is recomputed) -> ROOT/subsets/<name>/selection.parquet."""
    from curate.stages.filter import filter_clips

    s = filter_clips(root, subset, encoder=encoder, caption=caption, min_sim=min_sim, min_duration=min_duration,
                     max_duration=max_duration, where=where or None, top_percent=top_percent, top_by=top_by,
                     max_per_source=max_per_source, per_source_by=per_source_by, preset=preset,
                     min_aesthetic=min_aesthetic, min_motion=min_motion, max_motion=max_motion,
                     max_dup_sim=max_dup_sim, min_width=min_width, min_height=min_height, min_aspect=min_aspect,
                     max_aspect=max_aspect, min_fps=min_fps, max_text_area=max_text_area,
                     max_text_boxes=max_text_boxes, max_nsfw=max_nsfw, min_sharpness=min_sharpness,
                     min_brightness=min_brightness, max_brightness=max_brightness, min_contrast=min_contrast,
                     max_black_frac=max_black_frac, max_frozen_frac=max_frozen_frac, max_letterbox=max_letterbox,
                     max_pillarbox=max_pillarbox)
    if json_out:
        out.print_json(json.dumps(s, default=str))
        return
    console.print(f"[bold green]filter[/] subset={escape(subset)} kept {s['kept']} of {s['total']} clips")
    for r in s["rules"]:
        cond = r["value"] if r["kind"] == "where" else f"{r['column']} {r['op']} {r['value']}"
        alone = s["dropped_by_rule"].get(r["name"])
        console.print(f"  {escape(r['name'])}: {escape(str(cond))} dropped {s['funnel'][r['name']]} in order"
                      + (f", {alone} on its own" if alone is not None else ""))


@app.command()
@guarded
def publish(
    root: str = ROOT_OPT,
    subset: str = typer.Option(..., "--subset", help="Subset made by `curate filter`."),
    shard_size: int = typer.Option(1000, help="Clips per WebDataset shard."),
    workers: int = typer.Option(4, help="Parallel ffmpeg cuts."),
    cut: str = typer.Option("accurate", help="accurate: frame-accurate H.264 re-encode; copy: stream copy (exact only "
                                             "at keyframes, fast, lossless)."),
    caption: str | None = typer.Option(None, "--caption", help="What the caption field holds: source or "
                                                                "captions:NAME (default: what `curate filter --caption` "
                                                                "chose, else source). Every generated caption is "
                                                                "published beside it either way."),
    shard: str | None = typer.Option(None, "--shard", help="Write only WebDataset shards K with K %% N == I (e.g. "
                                                           "3/8): N processes cut one subset together; then one run "
                                                           "without --shard writes annotations.parquet and the card."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Cut the kept clips and write WebDataset shards, annotations.parquet and a README.md dataset card."""
    from curate.stages.publish import publish as run
    from curate.stages.shard import parse_shard

    r = run(root, subset, shard_size=shard_size, workers=workers, cut=cut, caption=caption, shard=parse_shard(shard),
            progress=RichProgress())
    finish(r, json_out)


@app.command()
@guarded
def features(
    root: str = ROOT_OPT,
    encoder: str = typer.Option("clip", "--encoder", "-e", help="Encoder with per-frame image features (clip)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Encoder option key=value (model=ViT-B/32 ...)."),
    name: str | None = typer.Option(None, help="Name of this feature set (default: the encoder name)."),
    fps: float | None = typer.Option(None, help="Frames per second to extract (video_features extraction_fps)."),
    frames: int | None = typer.Option(None, help="Extract N frames uniformly over the video (extraction_total)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
    batch_size: int = typer.Option(64, help="Frames per forward pass."),
    save_numpy: bool = typer.Option(False, "--save-numpy", help="Also write <source_id>_<name>.npy, _timestamps_ms.npy "
                                                               "and _fps.npy (video_features layout) under "
                                                               "ROOT/features_npy/<name>/."),
    show_pred: list[str] | None = typer.Option(None, "--show-pred", help="Texts to classify each frame against: "
                                                                           "prints per-frame softmax probabilities."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary (and predictions) as JSON."),
) -> None:
    """Per-source frame features (num_frames, D) with timestamps_ms and fps, as video_features writes them."""
    from curate.stages.embed import parse_options
    from curate.stages.features import features as run
    from curate.stages.features import show_predictions

    opts = parse_options(option)
    r = run(root, encoder, options=opts, name=name, fps=fps, frames=frames, device=device, batch_size=batch_size,
            save_numpy=save_numpy, progress=RichProgress())
    if not show_pred:
        finish(r, json_out)
        return
    preds = show_predictions(root, show_pred, name=name or encoder, encoder=encoder, options=opts, device=device)
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
    run_config(cfg, RichProgress, on_result=lambda r: finish(r) if hasattr(r, "as_dict") else
               console.print(f"[bold green]filter[/] kept {r['kept']} of {r['total']} clips"))
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
    from curate.status import stage_counts
    from curate.store import Root

    if not Root(root).exists(""):
        raise CurateError(f"{root} does not exist.")
    if json_out:
        out.print_json(json.dumps(stage_counts(root)))
        return
    status_table(root)


def status_table(root: Any) -> None:
    from curate.status import stage_counts

    t = RichTable("stage", "ok", "error", "pending", title=f"curate status {root}")
    for stage, c in stage_counts(root).items():
        extra = f" ({c['clips']} clips)" if "clips" in c else ""
        t.add_row(stage, f"{c['ok']}{extra}", str(c["error"]), str(c["pending"]))
    out.print(t)


def _register_plugin_commands() -> None:
    from curate.plugins import load_plugins

    load_plugins().hook.register_commands(cli=app)


def main(argv: list[str] | None = None) -> None:
    _register_plugin_commands()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="curate")


if __name__ == "__main__":
    main()
