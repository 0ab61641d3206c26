"""The dataset root and its tables.

A root is a local directory or any fsspec URL (``s3://bucket/prefix``, ``gs://``, ``az://``, ``file://``);
see :mod:`curate.store.storage` for the file API and the scratch directory. Every table (``sources``, ``clips``,
``scores``, ``embeddings/<name>``, ``features/<name>``, ...) is a `Lance <https://lancedb.github.io/lance/>`_
dataset in the directory of its name. Lance commits each write as a new version with a conditional
create of the version's manifest (put-if-absent on object storage), so several processes on several
machines append to and upsert (``merge_insert``) one table at once without any lock, and a crash leaves
at most unreferenced data files, never a half-written version. A commit that loses a race is retried
(:func:`retry_commit`). Appends add fragments; :meth:`Table.compact` merges them and removes old versions
(the maintenance step, ``curate compact``).

What still needs a single writer (a stage run over the whole root, a subset's card, an index build) takes
:meth:`Root.lock`: a lease file created conditionally under ``ROOT/.locks/``, never ``flock``.

A root written by curate before Lance (tables as directories of ``part-*.parquet``) is read transparently
and migrated table by table on its first write, or all at once by ``curate migrate``.

The package: :mod:`curate.store.storage` (file API over local paths and fsspec URLs, scratch),
:mod:`curate.store.names` (the names that become directories; caption sources), :mod:`curate.store.schemas`
(every built-in table's shape), :mod:`curate.store.tables` (a Lance table; atomic plain-file writes),
:mod:`curate.store.leases` (single writers and claims by conditional create) and :mod:`curate.store.root` (the root and its
maintenance). What the stages use is re-exported here.
"""

import importlib
from typing import TYPE_CHECKING

#: public name -> the module that defines it; imported on first use, so that ``curate.store.storage``
#: (what the CLI shell and the DAG files need at parse time) does not pull in pyarrow and Lance
_WHERE = {
    **dict.fromkeys(["NAME_PATTERN", "check_name", "safe_name"], "names"),
    **dict.fromkeys(["Lease", "SharedRun"], "leases"),
    **dict.fromkeys(["Root", "export_table", "maintain", "migrate", "table_at"], "root"),
    **dict.fromkeys(["FEATURES_SCHEMA", "KEYS", "SCHEMAS", "TRANSITIONS_SCHEMA", "caption_schema", "embedding_schema"],
                    "schemas"),
    **dict.fromkeys(["Table", "conform", "has_duplicates", "retry_commit", "rows_to_table", "stable_id",
                     "write_bytes_atomic", "write_row_groups", "write_table_atomic"], "tables"),
}
__all__ = ["FEATURES_SCHEMA", "KEYS", "NAME_PATTERN", "SCHEMAS", "TRANSITIONS_SCHEMA", "Lease", "Root", "SharedRun",
           "Table", "caption_schema", "check_name", "conform", "embedding_schema", "export_table", "has_duplicates",
           "maintain", "migrate", "retry_commit", "rows_to_table", "safe_name", "stable_id", "table_at",
           "write_bytes_atomic", "write_row_groups", "write_table_atomic"]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"curate.store.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'curate.store' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


if TYPE_CHECKING:
    from curate.store.leases import Lease, SharedRun
    from curate.store.names import NAME_PATTERN, check_name, safe_name
    from curate.store.root import Root, export_table, maintain, migrate, table_at
    from curate.store.schemas import (
        FEATURES_SCHEMA,
        KEYS,
        SCHEMAS,
        TRANSITIONS_SCHEMA,
        caption_schema,
        embedding_schema,
    )
    from curate.store.tables import (
        Table,
        conform,
        has_duplicates,
        retry_commit,
        rows_to_table,
        stable_id,
        write_bytes_atomic,
        write_row_groups,
        write_table_atomic,
    )
