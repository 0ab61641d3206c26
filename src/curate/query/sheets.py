"""Contact sheets: PNG grids of the middle frame of clips, each labelled (search hits, a report's best and
worst clips by a score). One drawing for both `curate search --contact-sheet` and `curate report`."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.media.video import MediaError, get_frames, open_video
from curate.query.search import describe_clips
from curate.store import Root

__all__ = ["contact_sheet", "results_sheet"]

LABEL_H = 40
BACKGROUND = (24, 24, 24)


def contact_sheet(root: Root | str, cells: Sequence[dict | None], path: str | os.PathLike, *, columns: int = 5,
                  thumb_width: int = 256) -> Path:
    """A PNG grid, ``columns`` wide, of ``cells``: ``{"clip_id", "title", "subtitle"}`` each (None: an empty
    cell). A clip whose frame cannot be read gets a "frame unavailable" box; the file is replaced atomically."""
    from PIL import Image, ImageDraw, ImageFont


    root = root if isinstance(root, Root) else Root(root)
    info = describe_clips(root, [c["clip_id"] for c in cells if c is not None])
    cols = max(1, min(columns, len(cells) or 1))
    rows = max(1, math.ceil(len(cells) / cols))
    th = thumb_width * 9 // 16
    sheet = Image.new("RGB", (cols * thumb_width, rows * (th + LABEL_H)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    readers: dict[str, Any] = {}
    for i, cell in enumerate(cells):
        if cell is None:
            continue
        x, y = (i % cols) * thumb_width, (i // cols) * (th + LABEL_H)
        c = info.get(cell["clip_id"], {})
        try:
            mp = c.get("media_path")
            if not mp:
                raise MediaError("media missing")
            if mp not in readers:
                readers[mp] = open_video(root.media_file(mp))
            mid = (int(c["start_frame"]) + int(c["end_frame"]) - 1) // 2
            frame = Image.fromarray(get_frames(readers[mp], [mid])[0])
        except (MediaError, CurateError, KeyError, TypeError, ValueError):
            frame = None
        if frame is not None:
            frame.thumbnail((thumb_width, th))
            sheet.paste(frame, (x + (thumb_width - frame.width) // 2, y + (th - frame.height) // 2))
        else:
            draw.rectangle([x + 2, y + 2, x + thumb_width - 3, y + th - 3], outline=(120, 120, 120))
            draw.text((x + 8, y + th // 2 - 7), "frame unavailable", fill=(200, 200, 200), font=font)
        draw.text((x + 6, y + th + 3), str(cell.get("title", "")), fill=(255, 255, 255), font=font)
        draw.text((x + 6, y + th + 21), str(cell.get("subtitle", cell["clip_id"]))[:40], fill=(170, 170, 170),
                  font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{out.name}")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out


def results_sheet(root: Root | str, results: Sequence[dict], path: str | os.PathLike, *, columns: int = 5,
                  thumb_width: int = 256) -> Path:
    """The contact sheet of search hits: each labelled with rank, score, time range and clip id."""
    cells = []
    for r in results:
        t = ""
        if r.get("start_s") is not None and r.get("end_s") is not None:
            t = f"  {float(r['start_s']):.1f}-{float(r['end_s']):.1f}s"
        cells.append({"clip_id": r["clip_id"], "title": f"#{r['rank']}  {float(r['score']):.3f}{t}",
                      "subtitle": str(r["clip_id"])})
    return contact_sheet(root, cells, path, columns=columns, thumb_width=thumb_width)
