"""`curate run CONFIG.yaml`: every stage from one YAML file (examples under ``configs/``).

Top-level keys: ``root``, ``sources`` and one section per stage (``ingest``, ``split``, ``process``,
``caption`` (a mapping or a list of mappings, one per captioner), ``embed`` (a mapping or a list of
mappings, one per encoder; ``caption: captions:NAME`` embeds generated captions), ``score``, ``filter``,
``publish``). A section's keys are the stage's options, declared once in :mod:`curate.stages.options`
(as `curate <stage> --help` lists them); unknown keys and values of the wrong type are errors that name
the key. A stage whose section is absent is skipped; relative paths are relative to the config file.
Stages run in that order (caption before embed, so an embed entry can embed the generated captions).

``process``: split and embed in one decode per source (`curate process`) with that section's encoder;
it replaces ``split`` (a config has one or the other). Further ``embed`` entries embed the usual way.

``one_pass`` (default true): when the config has a split section and its first embed entry can run with
it, the two run as `curate process` (one decode per source: scene detection, frame sampling and the
encoder fed from the same frames, with ``decoder=ffmpeg``), the start-up and the model load paid once.
``one_pass: false`` runs split, then embed with decord. See :func:`one_pass_embed`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from curate.errors import CurateError
from curate.progress import NullProgress, Progress, StageResult
from curate.stages.options import YAML_STAGES, check_section, with_defaults, yaml_keys
from curate.store.storage import is_remote

#: the keys of each stage's section: the stage's options as :mod:`curate.stages.options` declares them
SECTIONS: dict[str, set[str]] = {stage: yaml_keys(stage) for stage in YAML_STAGES}
#: sections that may be a list of mappings (one entry per captioner / encoder)
LISTS = {"caption", "embed"}
TOP = {"root", "sources", "one_pass", *SECTIONS}


def check_sections(cfg: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``cfg`` with every stage section checked against the stage's declared options and coerced to the
    types the stage takes (idempotent: :func:`run_config` checks what it is given too)."""
    cfg = dict(cfg)
    for sec in SECTIONS:
        if sec not in cfg:
            continue
        items = cfg[sec]
        many = isinstance(items, list)
        if many and sec not in LISTS:
            raise CurateError(f"{where}section {sec!r} must be a mapping (only {' and '.join(sorted(LISTS))} take "
                              "a list)")
        checked = []
        for item in (items if many else [items]):
            if item is not None and not isinstance(item, dict):
                raise CurateError(f"{where}section {sec!r} must be a mapping")
            checked.append(check_section(sec, item, where))
        cfg[sec] = checked if many else checked[0]
    if "process" in cfg and "split" in cfg:
        raise CurateError(f"{where}'process' splits and embeds in one pass: give it or a 'split' section, not both")
    return cfg


def load_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise CurateError(f"Config file {str(p)!r} does not exist.")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise CurateError(f"{p}: invalid YAML: {e}") from e
    if not isinstance(cfg, dict):
        raise CurateError(f"{p}: the top level must be a mapping")
    unknown = set(cfg) - TOP
    if unknown:
        raise CurateError(f"{p}: unknown keys {sorted(unknown)} (known: {sorted(TOP)})")
    cfg = check_sections(cfg, f"{p}: ")
    if "root" not in cfg:
        raise CurateError(f"{p}: 'root' is required")
    base = p.resolve().parent
    if not is_remote(str(cfg["root"])):  # a relative root is relative to the config file; URLs as they are
        cfg["root"] = str((base / cfg["root"]).resolve()) if not Path(str(cfg["root"])).is_absolute() else cfg["root"]
    if cfg.get("sources") and "://" not in str(cfg["sources"]):
        src = Path(str(cfg["sources"]))
        cfg["sources"] = str(src if src.is_absolute() else (base / src).resolve())
    return cfg


def one_pass_embed(cfg: dict[str, Any], embeds: list[dict]) -> dict | None:
    """The embed entry that `curate run` runs together with split in one decode per source (`curate process`),
    or None: needs ``one_pass`` (default true), a split section, a first embed entry that embeds the clips'
    own captions (no ``caption:``) without ``decoder=decord``, and a splitter that can be fed frame by frame."""
    from curate.plugins import get_splitter
    from curate.stages.process import feeds_one_pass

    if not cfg.get("one_pass", True) or "split" not in cfg or not embeds:
        return None
    from curate.store.names import parse_caption_source

    e, s = embeds[0], cfg.get("split") or {}
    if parse_caption_source(e.get("caption")) is not None:  # generated captions: embed them the usual way
        return None
    if str((e.get("options") or {}).get("decoder", "ffmpeg")) != "ffmpeg":
        return None
    splitter = get_splitter(s.get("detector", "auto")).create(**(s.get("options") or {}))
    return e if feeds_one_pass(splitter) else None


def run_config(cfg: dict[str, Any], progress_factory: Callable[[], Progress] = NullProgress,
               on_result: Callable[[StageResult], None] = lambda r: None) -> list[StageResult]:
    """Run the stages of a loaded config in order; returns each stage's result."""
    from curate.stages.caption import caption
    from curate.stages.embed import embed
    from curate.stages.filter import filter_clips
    from curate.stages.ingest import ingest
    from curate.stages.publish import publish
    from curate.stages.score import score
    from curate.stages.split import split

    cfg = check_sections(cfg)
    root = cfg["root"]
    results: list[StageResult] = []

    def record(r):
        results.append(r)
        on_result(r)
        return r

    if cfg.get("sources") or "ingest" in cfg:
        record(ingest(root, cfg.get("sources"), progress=progress_factory(),
                      **with_defaults("ingest", cfg.get("ingest"))))
    embeds = cfg.get("embed") or []
    embeds = list(embeds if isinstance(embeds, list) else [embeds])
    first = None if "process" in cfg else one_pass_embed(cfg, embeds)
    if "process" in cfg:  # split + embed in one decode per source, as configured
        from curate.stages.process import process

        pr = with_defaults("process", cfg["process"])
        record(process(root, pr.pop("encoder"), progress=progress_factory(), **pr))
    elif first is not None:  # split + the first embedding set in one decode per source
        from curate.stages.process import process

        e, s = with_defaults("embed", embeds.pop(0)), with_defaults("split", cfg.get("split"))
        record(process(root, e.pop("encoder"), detector_options=s.pop("options"), progress=progress_factory(),
                       **s, **{k: v for k, v in e.items() if k not in ("workers", "caption")}))
    elif "split" in cfg:
        record(split(root, progress=progress_factory(), **with_defaults("split", cfg["split"])))
    caps = cfg.get("caption") or []
    for c in caps if isinstance(caps, list) else [caps]:
        c = with_defaults("caption", c)
        record(caption(root, c.pop("captioner"), progress=progress_factory(), **c))
    for e in embeds:
        e = with_defaults("embed", e)
        record(embed(root, e.pop("encoder"), progress=progress_factory(), **e))
    if "score" in cfg:
        record(score(root, progress=progress_factory(), **with_defaults("score", cfg["score"])))
    subset = None
    if cfg.get("filter"):
        f = with_defaults("filter", cfg["filter"])
        subset = f.pop("subset")
        record(filter_clips(root, subset, **f))
    if "publish" in cfg:
        p = with_defaults("publish", cfg["publish"])
        subset = p.pop("subset") or subset or "default"
        record(publish(root, subset, progress=progress_factory(), **p))
    return results
