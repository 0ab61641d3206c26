"""The shapes of the built-in tables under a dataset root: the store owns all of them (the stages that
write a table and the readers both take its shape from here).

``sources`` and ``clips`` (keyed by ``source_id`` / ``clip_id``), ``transitions``, ``embeddings/<name>``,
``captions/<name>`` and ``features/<name>``; ``scores`` has no fixed shape (its columns are the scorers').
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["FEATURES_SCHEMA", "KEYS", "SCHEMAS", "TRANSITIONS_SCHEMA", "caption_schema", "embedding_schema", "tables"]

STR = pa.string()
F64 = pa.float64()
I64 = pa.int64()

SCHEMAS: dict[str, pa.Schema] = {
    "sources": pa.schema([
        ("source_id", STR), ("url", STR), ("caption", STR), ("title", STR), ("meta", STR),
        ("start_s", F64), ("end_s", F64),
        ("status", STR), ("error", STR), ("error_kind", STR), ("attempts", I64),
        ("media_path", STR), ("info_path", STR),
        ("duration_s", F64), ("fps", F64), ("width", I64), ("height", I64), ("codec", STR), ("num_frames", I64),
        ("updated_at", F64),
    ]),
    "clips": pa.schema([
        ("clip_id", STR), ("source_id", STR), ("clip_index", I64),
        ("start_s", F64), ("end_s", F64), ("start_frame", I64), ("end_frame", I64), ("duration_s", F64),
        ("caption", STR), ("splitter", STR), ("status", STR), ("error", STR), ("updated_at", F64),
    ]),
}

KEYS = {"sources": "source_id", "clips": "clip_id", "scores": "clip_id"}


def embedding_schema() -> pa.Schema:
    """``embeddings/<name>``: one clip vector (``[D]`` or a ``[Q, D]`` stack, flattened) and caption vector per clip."""
    return pa.schema([
        ("clip_id", STR), ("video_emb", pa.list_(pa.float32())), ("text_emb", pa.list_(pa.float32())),
        ("status", STR), ("error", STR), ("updated_at", F64),
    ])


def caption_schema() -> pa.Schema:
    """``captions/<name>``: one generated caption per clip (see :mod:`curate.stages.caption`)."""
    return pa.schema([
        ("clip_id", STR), ("caption", STR), ("captioner", STR), ("model", STR), ("weights", STR), ("prompt", STR),
        ("generation", STR), ("tokens", I64), ("seconds", F64), ("status", STR), ("error", STR), ("updated_at", F64),
    ])


#: ROOT/transitions: the transitions the splitter found in each source; their frames belong to no clip
TRANSITIONS_SCHEMA = pa.schema([
    ("transition_id", STR), ("source_id", STR), ("start_frame", I64), ("end_frame", I64),
    ("start_s", F64), ("end_s", F64), ("kind", STR), ("score", F64), ("splitter", STR), ("updated_at", F64),
])


#: ROOT/features/<name>: one row per source, its per-frame features flattened (``curate features``)
FEATURES_SCHEMA = pa.schema([
    ("source_id", STR), ("features", pa.list_(pa.float32())), ("shape", pa.list_(I64)),
    ("timestamps_ms", pa.list_(F64)), ("fps", F64), ("status", STR), ("error", STR), ("updated_at", F64),
])


def tables() -> dict[str, tuple[str, pa.Schema, str]]:
    """Every built-in table: kind -> (where under the root, its shape, what a row is). ``scores`` is not here: its
    columns are the scorers' (``curate plugins`` lists them). The reference page docs/tables.md is generated from
    this (``scripts/gen_docs.py``)."""
    return {
        "sources": ("sources", SCHEMAS["sources"], "one row per source video: where it came from, its download and probe"),
        "clips": ("clips", SCHEMAS["clips"], "one row per clip: a shot's frame range in its source"),
        "transitions": ("transitions", TRANSITIONS_SCHEMA,
                        "what split found between shots: cuts and gradual transitions (whose frames are in no clip)"),
        "embeddings": ("embeddings/<name>", embedding_schema(),
                       "one row per clip of an embedding set: its clip vector and its caption's vector"),
        "captions": ("captions/<name>", caption_schema(), "one row per clip of a captions set: the generated caption"),
        "features": ("features/<name>", FEATURES_SCHEMA, "one row per source: per-frame features (`curate features`)"),
    }
