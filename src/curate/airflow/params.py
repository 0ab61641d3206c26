"""The params of the curate DAGs (JSON Schema, validated when a run is triggered), generated from the stage
option declarations (:mod:`curate.stages.options`), and the keyword arguments a run's params become."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Param

from curate.airflow.settings import allowed_dirs, check_encoder_options, default_root, setting
from curate.optspec import json_schema
from curate.stages.options import option, stage_options
from curate.store import NAME_PATTERN  # what curate.store.safe_name accepts, as a JSON-Schema pattern


# ----------------------------------------------------------------------------- params
def stage_param(stage: str, name: str, *, note: str = "", **override: Any) -> Param:
    """The Param of one declared stage option (:mod:`curate.stages.options`): its type, constraints, default
    and help, as `curate <stage> --help` shows them; ``note`` adds what only a DAG run has to know,
    ``override`` replaces schema keys where the DAG means something else (``captioner``: null = no task)."""
    schema = {**json_schema(option(stage, name)), **override}
    if note:
        schema["description"] = f"{schema['description']} {note}"
    return Param(schema.pop("default"), **schema)


LOCAL_PATHS = "Local paths must be under CURATE_ALLOWED_DIRS."
#: the filter options a run takes as params of their own; every other one goes in ``filters``
FILTER_PARAMS = ("min_sim", "min_duration", "max_duration")


def pipeline_params() -> dict[str, Param]:
    """JSON-Schema params of ``curate_pipeline`` (validated when a run is triggered). The stage options are
    generated from their declarations; sources, root, one_pass, batch_size and publish_tasks are the DAG's."""
    return {
        "sources": Param(type="string", minLength=1,
                         description="Path of a source list (CSV/TSV/JSONL/JSON/Parquet/TXT with a 'url' column, "
                                     "optional caption/title/start_s/end_s) under CURATE_ALLOWED_DIRS or ROOT/inbox."),
        "root": Param(default_root(), type="string", minLength=1,
                      description="Dataset root (must be under CURATE_ROOTS when that is set)."),
        "subset": stage_param("filter", "subset"),
        "encoder": stage_param("embed", "encoder"),
        "encoder_options": stage_param("embed", "options", note=LOCAL_PATHS),
        "embedding_name": stage_param("embed", "name"),
        "device": stage_param("embed", "device"),
        "embed_batch_size": stage_param("embed", "batch_size"),
        "one_pass": Param(True, type="boolean",
                          description="Split and embed in ONE decode per source, on the GPU worker (`curate process`), "
                                      "whenever the detector and encoder options allow it (as `curate run`); false: "
                                      "split tasks per batch, then embed."),
        "decode_workers": stage_param("process", "workers", note="(With one_pass, on the GPU worker.)"),
        **{k: stage_param("filter", k, note="(null: no rule)") for k in FILTER_PARAMS},
        "detector": stage_param("split", "detector"),
        "min_clip_s": stage_param("split", "min_clip_s"),
        "max_clip_s": stage_param("split", "max_clip_s"),
        "batch_size": Param(50, type="integer", minimum=1, maximum=1_000_000,
                            description="Sources per mapped ingest/split task (raised automatically so that "
                                        "the number of batches stays within [core] max_map_length)."),
        "shard_size": stage_param("publish", "shard_size"),
        "publish_tasks": Param(None, type=["null", "integer"], minimum=1,
                               description="Mapped cut tasks that write the WebDataset shards side by side "
                                           "(null: one per shard, at most [core] max_map_length)."),
        "gpu_slots": Param(None, type=["null", "integer"], minimum=1, maximum=1024,
                           description="Resident worker slots per GPU stage (mapped tasks on the gpu queue; each loads "
                                       "its model once and claims batches until none is left). null: "
                                       "CURATE_GPU_SLOTS, else 2; set it to the size of the gpu pool."),
        "captioner": stage_param("caption", "captioner", default=None, type=["null", "string"],
                                 note="Runs the optional caption task on the GPU queue: every clip gets a generated "
                                      "caption, embedded with the run's encoder; min_sim then applies to it and it "
                                      "is the published caption (null: no captioning)."),
        "captioner_options": stage_param("caption", "options", note=LOCAL_PATHS),
        "scorers": stage_param("score", "scorers"),
        "scorer_options": stage_param("score", "options", note=LOCAL_PATHS),
        "dedup_groups": stage_param("dedup", "groups", note="(With the dedup scorer on a root where it is clustered; "
                                                             "its options are scorer_options.dedup.)"),
        "filters": filters_param(),
    }


#: the filter rules beyond min_sim/min_duration/max_duration, as JSON Schema (see `curate filter --help`);
#: ``preset`` is one of the shipped presets (a DAG run names no files)
FILTER_SCHEMA: dict[str, Any] = {
    name: json_schema(o, nullable=False, with_default=False) for name, o in stage_options("filter").items()
    if name not in (*FILTER_PARAMS, "subset", "encoder", "caption")
}


def filters_param() -> Param:
    return Param({}, type="object", properties=FILTER_SCHEMA, additionalProperties=False,
                 description="More filter rules (as `curate filter`): " + ", ".join(FILTER_SCHEMA) + ".")


def filter_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of curate.stages.filter.filter_clips from a run's params."""
    return {**{k: params.get(k) for k in FILTER_PARAMS}, **dict(params.get("filters") or {})}


def check_scorer_options(options: dict[str, Any], dirs: Sequence[str]) -> dict[str, dict[str, str]]:
    return {str(k): check_encoder_options(v or {}, dirs) for k, v in (options or {}).items()}


def dedup_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of curate.stages.dedup.dedup from a run's params: the run's embedding set and the dedup
    scorer's options (``scorer_options.dedup``)."""
    opts = check_scorer_options(params.get("scorer_options") or {}, allowed_dirs(params["root"]))
    return {"encoder": embedding_name(params), "options": opts.get("dedup") or {}}


def refilter_params() -> dict[str, Param]:
    p = pipeline_params()
    keep = ("root", "min_sim", "min_duration", "max_duration", "shard_size", "filters")
    out = {k: p[k] for k in keep}
    out["subset"] = stage_param("filter", "subset", default="refiltered",
                                note="A new subset: it must differ from the subset whose event triggered the run.")
    out["encoder"] = stage_param("filter", "encoder")
    return out


def inbox_params() -> dict[str, Param]:
    return {
        "root": Param(setting("CURATE_INBOX_ROOT") or default_root(), type="string", minLength=1,
                      description="Dataset root whose inbox/ is scanned."),
        "subset": Param(setting("CURATE_INBOX_SUBSET", "inbox"), type="string", pattern=NAME_PATTERN,
                        description="Subset every inbox run publishes."),
        "pipeline_conf": Param({}, type="object", description="Extra curate_pipeline params for every run."),
        "settle_s": Param(float(setting("CURATE_INBOX_SETTLE_S", "30") or 30), type="number", minimum=0,
                          description="Ignore lists modified less than this many seconds ago (still being written)."),
    }


def embedding_name(params: dict[str, Any]) -> str:
    """The embedding set of a run: ``embedding_name``, else the encoder's name."""
    return params.get("embedding_name") or params["encoder"]
