"""Captions sets: what every reader of ``ROOT/captions/<name>/`` (written by `curate caption`) goes through.

The generated captions are read by the embed stage (``--caption captions:NAME``), the alignment scorer (why a
clip has no caption), search, retrieval and publish; they sit here, beside :mod:`curate.embeddings`, below
the stages and the scorers that read them.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow.compute as pc
import pyarrow.dataset as pads

from curate.errors import CurateError
from curate.store import Root

__all__ = ["caption_errors", "caption_texts", "require_captions"]


def require_captions(root: Root | str, name: str) -> None:
    """Refuse (a :class:`CurateError` naming the sets there are) a captions set that `curate caption` has not made."""
    root = Root(root) if not isinstance(root, Root) else root
    if name not in root.caption_names() or not root.captions(name).exists():
        have = ", ".join(root.caption_names()) or "none"
        raise CurateError(f"No captions named {name!r} under {root.url('captions')} (have: {have}). "
                          f"Run `curate caption --root {root} --captioner NAME --name {name}` first.")


def caption_texts(root: Root | str, name: str, clip_ids: Iterable[str] | None = None) -> dict[str, str]:
    """clip id -> generated caption, for the ok rows of ``captions/<name>`` (only ``clip_ids`` when given)."""
    root = Root(root) if not isinstance(root, Root) else root
    table = root.captions(name)
    flt = pads.field("status") == "ok"
    if clip_ids is not None:
        flt = flt & pads.field("clip_id").isin(list(clip_ids))
    t = table.read_arrow(columns=["clip_id", "caption", "status"], filter=flt)
    t = t.filter(pc.is_valid(t["caption"]))
    return dict(zip(t["clip_id"].to_pylist(), t["caption"].to_pylist()))


def caption_errors(root: Root | str, name: str, clip_ids: Iterable[str]) -> dict[str, str]:
    """clip id -> error of the error rows of ``captions/<name>`` among ``clip_ids``."""
    root = Root(root) if not isinstance(root, Root) else root
    t = root.captions(name).read_arrow(columns=["clip_id", "error", "status"],
                                        filter=(pads.field("status") == "error") & pads.field("clip_id").isin(list(clip_ids)))
    return dict(zip(t["clip_id"].to_pylist(), t["error"].to_pylist()))
