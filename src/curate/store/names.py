"""Names: the alphabet of the names curate turns into directory names (subsets, embedding sets, captions sets),
and the caption-source names (``source`` / ``captions:NAME``) every stage and query that reads captions takes.

A leaf, kept apart from :mod:`curate.store.root` so that the shells (the CLI's option declarations, the DAG
params) and every floor above the store can use it without importing the table code.
"""

from __future__ import annotations

import re

from curate.errors import CurateError

#: a subset / embedding-set / captions-set name, as a JSON-Schema pattern (also what safe_name checks)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"


def check_name(name: str) -> str:
    """``name`` if it is a safe subset / embedding-set / captions-set name, else a :class:`CurateError`."""
    return safe_name(name)


def safe_name(name: str) -> str:
    """Names of subsets/embedding sets become directory names: keep them to a safe alphabet."""
    if not re.fullmatch(NAME_PATTERN, name or "") or ".." in name:
        raise CurateError(
            f"Invalid name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit."
        )
    return name


# ----------------------------------------------------------------------------- caption sources
#: the clips table's own caption (from the source list), as opposed to ``captions:NAME``
SOURCE = "source"


def parse_caption_source(spec: str | None) -> str | None:
    """``None``/``""``/``"source"`` -> None (the clips table's caption); ``"captions:NAME"`` -> ``NAME``."""
    if spec in (None, "", SOURCE):
        return None
    s = str(spec).strip()
    if s.startswith("captions:") and len(s) > len("captions:"):
        return check_name(s[len("captions:"):])
    raise CurateError(f"Caption source {spec!r}: use 'source' (the source list's caption) or 'captions:NAME' "
                      "(a set made by `curate caption --name NAME`).")


def caption_source_label(name: str | None) -> str:
    """The caption source a captions-set name stands for: None -> ``source``, ``NAME`` -> ``captions:NAME``."""
    return SOURCE if name is None else f"captions:{name}"
