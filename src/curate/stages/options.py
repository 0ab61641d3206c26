"""Every stage's options, declared once: name, type, default, help, CLI spelling and constraints.

The shells are generated from these declarations, so an option is added, renamed or re-documented here
and nowhere else:

- ``curate <stage>``: :func:`curate.cli.stage_options` turns each :class:`Opt` into a typer option
  (``flag``, ``short``, ``metavar``, ``help``; ``list`` options are repeatable, ``dict`` ones are
  ``-o key=value``);
- ``curate run`` YAML: :data:`curate.pipeline.SECTIONS` is ``{stage: keys}`` of :data:`STAGES`, and
  :func:`check_section` refuses unknown keys and coerces values by type (``"1e-3"`` -> 0.001, ``500M``
  -> bytes) with an error that names the key;
- Airflow: :mod:`curate.airflow.params` builds each ``Param`` from :func:`json_schema`.

The machinery (:class:`Opt`, :func:`coerce`, :func:`json_schema`) is :mod:`curate.optspec`'s, so that
plugins can declare their options the same way. A filter threshold is one line: ``Opt("min_x", "float", help=..., column="x", op=">=")``;
:data:`THRESHOLDS` (what :mod:`curate.stages.filter` applies) is derived from the ``column``/``op`` fields.

This module imports nothing heavy (the Airflow DAG processor imports it on every parse).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from curate.errors import CurateError

# the imports `X as X` re-export the option machinery (now curate.optspec's) for its old path until the merge
from curate.optspec import Opt, coerce
from curate.store.names import NAME_PATTERN

#: the preset files `curate filter --preset NAME` reads (``configs/presets`` links here)
PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"

def preset_names() -> list[str]:
    """The presets shipped with curate: the stems of ``curate/presets/*.yaml``."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _threshold(name: str, column: str, op: str, help: str, kind: str = "float", minimum: float | None = None) -> Opt:
    return Opt(name, kind, None, help, column=column, op=op, minimum=minimum)


# ----------------------------------------------------------------------------- shared declarations
DEVICE = Opt("device", "str", "auto", "auto (cuda when available), cpu, cuda, cuda:1 ...")
MIN_CLIP_S = Opt("min_clip_s", "float", 1.0, "Drop scenes shorter than this (seconds).", minimum=0)
MAX_CLIP_S = Opt("max_clip_s", "float", 60.0, "Cut scenes longer than this into equal pieces (seconds; 0 = no limit).",
                 nullable=True, minimum=0)
THRESHOLD = Opt("threshold", "float", None, "Detector threshold (transnetv2 0.5, content 27, adaptive 3, threshold 12).",
                into="options")
SPLITTERS = ("auto", "transnetv2", "content", "adaptive", "threshold", "none")
ENCODER = Opt("encoder", "str", "clip", "Encoder plugin name (`curate plugins`).", flag="--encoder", short="-e",
              pattern=NAME_PATTERN)
FORWARD_BATCH = Opt("batch_size", "int", 32, "Clips per forward pass.", minimum=1, maximum=4096)

STAGES: dict[str, tuple[Opt, ...]] = {
    "ingest": (
        Opt("workers", "int", 4, "Parallel downloads.", minimum=1),
        Opt("max_height", "int", None, "Download the best format no taller than this (e.g. 720).", minimum=1),
        Opt("max_filesize", "size", None, "Skip files larger than this (bytes, or 500M / 2G)."),
        Opt("max_duration", "float", None, "Mark sources longer than this many seconds as errors.", minimum=0),
        Opt("retry_errors", "bool", False, "Re-queue error rows whose kind is retryable "
                                           "(network, timeout, rate_limited, bot_check)."),
        Opt("allow_local", "bool", True, "Refuse local paths and file:// URLs.", flag="--no-local", invert=True),
        Opt("local_dirs", "list", None, "Only read local files under these directories.", flag="--allow-dir"),
        Opt("socket_timeout", "float", 30.0, "Network timeout per request, seconds.", flag="--timeout", minimum=0),
        Opt("retries", "int", 2, "Retries of transient download errors (exponential backoff with jitter).",
            minimum=0),
        Opt("backoff_s", "float", 2.0, "First retry's delay, seconds (doubled each retry, with jitter).", minimum=0,
            cli=False),
    ),
    "split": (
        Opt("detector", "str", "auto", "Splitter plugin: auto (transnetv2 with a GPU, else content), transnetv2 "
                                       "(TransNetV2, dissolves kept out of clips), content (ContentDetector), "
                                       "adaptive, threshold, none (whole source), or a third-party one "
                                       "(`curate plugins`).", choices=SPLITTERS, open_choices=True,
            pattern=NAME_PATTERN),
        THRESHOLD,
        Opt("options", "dict", None, "Detector option key=value (e.g. min_scene_len=10, device=cpu, weights=PATH).",
            flag="--option", short="-o"),
        MIN_CLIP_S,
        MAX_CLIP_S,
    ),
    "process": (
        ENCODER,
        Opt("options", "dict", None, "Encoder option key=value, repeatable.", flag="--option", short="-o"),
        Opt("name", "str", None, "Name of the embedding set (default: the encoder name).", pattern=NAME_PATTERN),
        Opt("detector", "str", "auto", "auto (transnetv2 with a GPU, else content), transnetv2, content, "
                                       "adaptive or threshold.", choices=SPLITTERS, open_choices=True,
            pattern=NAME_PATTERN),
        replace(THRESHOLD, into="detector_options"),
        Opt("detector_options", "dict", None, "Detector option key=value, repeatable (as `curate split -o`: "
                                              "device=cpu ...).", flag="--detector-option"),
        MIN_CLIP_S,
        MAX_CLIP_S,
        DEVICE,
        FORWARD_BATCH,
        Opt("workers", "int", 1, "Sources decoded at a time (each its own ffmpeg and detector thread); "
                                 "on a many-core GPU node about cores/4 keeps the encoder fed.", minimum=1, maximum=64),
    ),
    "caption": (
        Opt("captioner", "str", "hf", "Captioner plugin name (`curate plugins`).", flag="--captioner", short="-c",
            pattern=NAME_PATTERN),
        Opt("options", "dict", None, "Captioner option key=value, repeatable (hf: "
                                     "weights=Qwen/Qwen2.5-VL-3B-Instruct frames=8 max_new_tokens=128 prompt=...).",
            flag="--option", short="-o"),
        Opt("name", "str", None, "Name of this captions set (default: the captioner name); later "
                                 "stages use it as --caption captions:<name>.", pattern=NAME_PATTERN),
        DEVICE,
        Opt("batch_size", "int", 8, "Clips per generate call.", minimum=1),
        Opt("workers", "int", 2, "Decoder threads running ahead of the model.", minimum=1),
        Opt("retry_errors", "bool", False, "Caption again the clips whose row is an error "
                                           "(degenerate output, failed generation)."),
    ),
    "embed": (
        ENCODER,
        Opt("options", "dict", None, "Encoder option key=value, repeatable "
                                     "(clip: model=ViT-B-32 weights=openai frames=8).", flag="--option", short="-o"),
        Opt("name", "str", None, "Name of this embedding set (default: the encoder name); scores "
                                 "become <name>_sim. Use it to compare two configurations.", pattern=NAME_PATTERN),
        Opt("caption", "str", "source", "Text to embed as each clip's caption: source (the "
                                    "source list's) or captions:NAME (generated by `curate "
                                    "caption`; --name then defaults to <encoder>_<NAME> and "
                                    "clip vectors are copied from a set with the same "
                                    "encoder and options).", flag="--caption", nullable=True),
        DEVICE,
        FORWARD_BATCH,
        Opt("workers", "int", 2, "Decoder threads running ahead of the model.", minimum=1),
    ),
    "score": (
        Opt("encoder", "str", None, "Only this embedding set (default: all).", flag="--encoder", short="-e",
            pattern=NAME_PATTERN),
        Opt("scorers", "list", ("technical", "alignment"), "Scorer plugins to run (repeatable): technical, alignment, "
                                                          "aesthetic, motion, dedup, text (on-screen text), nsfw, "
                                                          "quality, or third-party ones.", flag="--scorer",
            short="-s", pattern=NAME_PATTERN),
        Opt("options", "dicts", None, "Scorer option scorer.key=value (e.g. aesthetic.recipe=opensora, "
                                      "dedup.by=aesthetic); plain key=value when one scorer is given.",
            flag="--option", short="-o"),
        Opt("caption", "str", None, "Alignment only of the embedding sets whose text "
                                    "embeddings are this caption source (source, or "
                                    "captions:NAME embedded with `curate embed --caption`).", flag="--caption"),
    ),
    "dedup": (
        Opt("encoder", "str", None, "Embedding set to compare (default: the only one).", flag="--encoder", short="-e",
            pattern=NAME_PATTERN),
        Opt("options", "dict", None, "Dedup scorer option key=value, as `curate score -o dedup.KEY=VALUE`: "
                                     "method (auto, exact, clustered), k (clusters; default ~sqrt(clips)), "
                                     "boundary (second cluster within this cosine of the first; none: off), by, "
                                     "device (auto, numpy, cpu, cuda), block, incremental.",
            flag="--option", short="-o"),
        Opt("groups", "int", 1, "Groups of clusters the plan deals the work into: mapped dedup_group tasks in "
                                "curate_pipeline (the CLI gives N with --shard I/N).", minimum=1, maximum=4096,
            cli=False),
    ),
    "filter": (
        Opt("subset", "str", "default", "Name of the subset to create (ROOT/subsets/<name>).", flag="--subset",
            required=True, pattern=NAME_PATTERN),
        Opt("preset", "str", None, "Preset name (internvid-flt, internvid-aes, panda, opensora, "
                                   "clean-content) or a YAML path; explicit options override it.",
            choices=preset_names, open_choices=True),
        _threshold("min_sim", "{sim}", ">=", "Keep clips with <encoder>_sim >= this.", minimum=-1),
        Opt("encoder", "str", None, "Which <encoder>_sim, when several were scored.", flag="--encoder", short="-e",
            pattern=NAME_PATTERN),
        Opt("caption", "str", None, "captions:NAME: the generated captions are the "
                                    "subset's captions: --min-sim applies to the embedding "
                                    "set of those captions, clips without one are dropped, "
                                    "and publish puts them in the caption field.", flag="--caption"),
        _threshold("min_duration", "duration_s", ">=", "Keep clips at least this long (seconds).", minimum=0),
        _threshold("max_duration", "duration_s", "<=", "Keep clips at most this long (seconds).", minimum=0),
        _threshold("min_aesthetic", "aesthetic", ">=", "Keep aesthetic >= this (1-10; InternVid-Aes: 4)."),
        _threshold("min_motion", "motion", ">=", "Keep motion >= this (px/frame at 160 px; still clips ~0)."),
        _threshold("max_motion", "motion", "<=", "Keep motion <= this."),
        _threshold("max_dup_sim", "dup_sim", "<", "Drop a clip when a better clip is at least this similar "
                                                  "(needs the dedup scorer; Open-Sora: 0.98)."),
        _threshold("min_width", "width", ">=", "Keep sources at least this wide (px).", "int"),
        _threshold("min_height", "height", ">=", "Keep sources at least this tall (px).", "int"),
        _threshold("min_aspect", "aspect", ">=", "Keep width/height >= this."),
        _threshold("max_aspect", "aspect", "<=", "Keep width/height <= this."),
        _threshold("min_fps", "fps", ">=", "Keep sources with fps >= this."),
        # content scorers: text (OCR), nsfw, quality
        _threshold("max_text_area", "text_area", "<=", "Keep text_area <= this: fraction of the frame covered by "
                                                       "on-screen text, 0-1 (text scorer; 0.02 drops subtitles)."),
        _threshold("max_text_boxes", "text_boxes", "<=", "Keep clips with at most this many text boxes in a frame "
                                                         "(text scorer; Open-Sora counts boxes).", "int"),
        _threshold("max_nsfw", "nsfw", "<=", "Keep nsfw <= this (nsfw scorer, 0-1; 0.5 drops detected nudity)."),
        _threshold("min_sharpness", "sharpness", ">=", "Keep sharpness >= this (quality scorer: variance of the "
                                                       "Laplacian at 256 px; blurred clips score tens)."),
        _threshold("min_brightness", "brightness", ">=", "Keep brightness >= this (quality scorer, mean luma 0-1)."),
        _threshold("max_brightness", "brightness", "<=", "Keep brightness <= this."),
        _threshold("min_contrast", "contrast", ">=", "Keep contrast >= this (quality scorer, RMS contrast 0-1)."),
        _threshold("max_black_frac", "black_frac", "<=", "Keep clips with at most this fraction of black frames."),
        _threshold("max_frozen_frac", "frozen_frac", "<=", "Keep clips with at most this fraction of frozen "
                                                           "(near-identical) consecutive sampled frames."),
        _threshold("max_letterbox", "letterbox", "<=", "Keep clips whose letterbox bars take at most this fraction "
                                                       "of the height."),
        _threshold("max_pillarbox", "pillarbox", "<=", "Keep clips whose pillarbox bars take at most this fraction "
                                                       "of the width."),
        Opt("where", "list", None, "Expression over score columns, repeatable, e.g. "
                                   "\"clip_sim >= 0.3 and (aesthetic > 4.5 or motion < 2)\".", flag="--where",
            max_length=2000, one_str=True),
        Opt("top_percent", "float", None, "Keep the best P% by --top-by among clips passing the other "
                                          "thresholds (exactly ceil(P/100*n); ties by clip id).",
            exclusive_minimum=0, maximum=100),
        Opt("top_by", "str", None, "Column for --top-percent (default: the alignment score).", pattern=NAME_PATTERN),
        Opt("license", "list", None, "Keep only clips whose source's licence is one of these, repeatable (the source "
                                     "list's license column, else yt-dlp's info JSON; compared ignoring case, "
                                     "spaces and '_' as '-'; unknown keeps clips without one).", flag="--license",
            max_length=200),
        Opt("max_per_source", "int", None, "Keep at most N clips per source (Panda-70M: 3).", minimum=1),
        Opt("per_source_by", "str", None, "Column ranking clips within a source (default: alignment).",
            pattern=NAME_PATTERN),
    ),
    "publish": (
        Opt("subset", "str", None, "Subset made by `curate filter`.", flag="--subset", required=True,
            pattern=NAME_PATTERN),  # curate run: the filter section's subset
        Opt("shard_size", "int", 1000, "Clips per WebDataset shard.", minimum=1),
        Opt("workers", "int", None, "Parallel ffmpeg cuts (default: two per core, at most 16).", minimum=1),
        Opt("cut", "str", "auto", "auto: stream copy where both cut points fall on the source's keyframes "
                                  "(exact, lossless), else re-encode; accurate: frame-accurate H.264 re-encode "
                                  "of every clip; copy: stream copy of every clip (exact only at keyframes).",
            choices=("accurate", "copy", "auto")),
        Opt("preset", "str", None, "libx264 preset of the re-encode (default: veryfast).",
            choices=("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")),
        Opt("crf", "int", None, "libx264 CRF of the re-encode (default: 18; lower is better and larger).",
            minimum=0, maximum=51),
        Opt("caption", "str", None, "What the caption field holds: source or "
                                    "captions:NAME (default: what `curate filter --caption` "
                                    "chose, else source). Every generated caption is "
                                    "published beside it either way.", flag="--caption"),
    ),
    "features": (
        Opt("encoder", "str", "clip", "Encoder with per-frame image features (clip).", flag="--encoder", short="-e",
            pattern=NAME_PATTERN),
        Opt("options", "dict", None, "Encoder option key=value (model=ViT-B/32 ...).", flag="--option", short="-o"),
        Opt("name", "str", None, "Name of this feature set (default: the encoder name).", pattern=NAME_PATTERN),
        Opt("fps", "float", None, "Frames per second to extract (video_features extraction_fps).",
            exclusive_minimum=0),
        Opt("frames", "int", None, "Extract N frames uniformly over the video (extraction_total).", minimum=1),
        Opt("device", "str", "auto", "auto, cpu, cuda, cuda:1 ..."),
        Opt("batch_size", "int", 64, "Frames per forward pass.", minimum=1),
        Opt("save_numpy", "bool", False, "Also write <source_id>_<name>.npy, _timestamps_ms.npy "
                                         "and _fps.npy (video_features layout) under "
                                         "ROOT/features_npy/<name>/."),
    ),
}

#: what `curate process|embed|caption|score --worker` adds: a resident worker (:mod:`curate.workers`); not stage
#: arguments, so neither YAML keys nor DAG params (the DAG maps its slot tasks itself)
WORKER: tuple[Opt, ...] = (
    Opt("worker", "bool", False, "Run as a resident worker: load the model once, then claim batches of sources "
                                 "on the root (leases) until none is left. Start one per GPU, in as many shells, "
                                 "pods or Slurm tasks as you like: they share the root with no scheduler.",
        yaml=False),
    Opt("batch_sources", "int", 8, "With --worker: sources per batch (the unit a worker claims, commits and "
                                   "loses when it dies).", minimum=1, yaml=False),
    Opt("prefetch", "int", 1, "With --worker: batches claimed ahead of the one in the model (their decode "
                              "overlaps its forward).", minimum=0, maximum=8, yaml=False),
)
WORKER_STAGES = ("process", "embed", "caption", "score")

#: the stages `curate run` has a YAML section for, in the order it runs them
YAML_STAGES = ("ingest", "split", "process", "caption", "embed", "score", "filter", "publish")

#: filter threshold options: name -> (column, op). "{sim}" is the alignment column of the chosen encoder.
THRESHOLDS: dict[str, tuple[str, str]] = {o.name: (o.column, o.op) for o in STAGES["filter"] if o.column}


def stage_options(stage: str) -> dict[str, Opt]:
    """``{name: Opt}`` of one stage, in declaration order."""
    try:
        return {o.name: o for o in STAGES[stage]}
    except KeyError:
        raise CurateError(f"No stage {stage!r} (stages: {', '.join(STAGES)})") from None


def option(stage: str, name: str) -> Opt:
    opts = stage_options(stage)
    if name not in opts:
        raise CurateError(f"{stage} has no option {name!r} (options: {', '.join(opts)})")
    return opts[name]


def yaml_keys(stage: str) -> set[str]:
    """The keys a `curate run` section of ``stage`` takes."""
    return {o.name for o in STAGES[stage] if o.yaml}


def check_section(stage: str, section: Mapping[str, Any] | None, where: str = "") -> dict[str, Any]:
    """A `curate run` section as keyword arguments of the stage: unknown keys refused (with the known
    ones), values coerced by :func:`coerce`, ``into`` options merged into their dict."""
    opts = {o.name: o for o in STAGES[stage] if o.yaml}
    section = dict(section or {})
    bad = set(section) - set(opts)
    if bad:
        raise CurateError(f"{where}unknown keys in {stage}: {sorted(bad)} (known: {sorted(opts)})")
    out = {k: coerce(opts[k], v, f"{where}{stage}.{k}") for k, v in section.items()}
    return merge_into(stage, out)


def with_defaults(stage: str, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``kwargs`` completed with the declared default of every option not given (what `curate run` passes:
    the same defaults as the command line and the DAG params, not the stage function's own)."""
    out = {o.name: (list(o.default) if isinstance(o.default, tuple) else o.default)
           for o in STAGES[stage] if o.yaml and not o.into}
    return {**out, **(kwargs or {})}


def merge_into(stage: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Move the ``into`` options (``threshold``) into the dict they belong to (``options``)."""
    for o in STAGES[stage]:
        if o.into and o.name in kwargs:
            v = kwargs.pop(o.name)
            if v is not None:
                kwargs[o.into] = {**(kwargs.get(o.into) or {}), o.name: v}
    return kwargs
