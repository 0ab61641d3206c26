"""On-screen text (burned-in subtitles, captions, tickers, watermarks) with PP-OCR via ``rapidocr``.

``frames`` frames (default 3, at 10/50/90% of the clip) are decoded at ``width`` px (default 640)
and run through RapidOCR's PP-OCR text detector (DBNet-style, ONNX, shipped inside the ``rapidocr``
wheel, run by onnxruntime: no download). A box counts as a text line when it is at most ``max_line``
(default 0.2) of the frame height thick: the detector also puts one big near-square box on large
textured regions (foliage, fractals), which no subtitle or caption line resembles. Columns:

- ``text_area``: the largest fraction of a frame covered by detected text boxes (the union of the
  boxes, so overlaps count once), over the sampled frames; 0 when there is no text;
- ``text_area_mean``: the same, averaged over the sampled frames;
- ``text_boxes``: the largest number of text boxes in one frame (Open-Sora's ``ocr`` column counts
  boxes the same way, with DBNet++);
- ``ocr_text`` (only with ``recognize=true``): the recognised lines, each once, in order of first
  appearance, joined by newlines (kept in the published JSON and annotations, for the card and for
  search). Recognition costs about as much again as detection, so it is off by default.

A clip whose frames cannot be decoded or read gets nulls and a reason in ``text_area_error``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curate.encoders.base import uniform_indices
from curate.errors import CurateError
from curate.media.frames import clip_groups, decode_clips
from curate.scorers import Scorer
from curate.scorers.pixels import frames_per_chunk, result_table, short_error, size_for_width
from curate.store import Root

POSITIONS = (0.1, 0.5, 0.9)


def _bool(v: bool | str) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise CurateError(f"expected true or false, got {v!r}")


def line_boxes(boxes: Any, height: int, max_line: float) -> list[np.ndarray]:
    """The quadrilaterals of ``boxes`` whose thickness (the shorter side) is at most ``max_line`` of the frame
    height: text lines. The detector also fires on large textured regions (foliage, fractals) with one
    near-square box; no subtitle, caption or ticker line is that thick."""
    out = []
    for b in [] if boxes is None else boxes:
        q = np.asarray(b, np.float32).reshape(-1, 2)
        sides = np.linalg.norm(q - np.roll(q, -1, axis=0), axis=1)
        if min(sides[0] + sides[2], sides[1] + sides[3]) / 2 <= max_line * height:
            out.append(q)
    return out


def text_area(boxes: Any, height: int, width: int) -> float:
    """Fraction of an ``height`` x ``width`` frame covered by the union of quadrilateral ``boxes`` [[x, y] * 4]."""
    import cv2

    if boxes is None or len(boxes) == 0:
        return 0.0
    mask = np.zeros((height, width), np.uint8)
    for b in boxes:  # one call per box: fillPoly over several polygons leaves their overlaps unfilled
        cv2.fillPoly(mask, [np.round(np.asarray(b, np.float32)).astype(np.int32).reshape(-1, 2)], 1)
    return float(mask.mean())


class TextScorer(Scorer):
    name = "text"
    incremental = True
    #: scores each clip on its own (any subset of clips, in any batch); nothing needs the whole root
    per_clip: ClassVar[bool] = True

    def __init__(self, frames: int | str = 3, width: int | str = 640, recognize: bool | str = False,
                 box_thresh: float | str = 0.5, text_score: float | str = 0.5, max_line: float | str = 0.2,
                 threads: int | str = 0, workers: int | str = 2) -> None:
        self.n, self.width, self.recognize = max(1, int(frames)), int(width), _bool(recognize)
        self.box_thresh, self.text_score, self.max_line = float(box_thresh), float(text_score), float(max_line)
        self.threads, self.workers = int(threads), int(workers)
        self.engine = None

    def columns(self, root: Root) -> list[str]:
        # with recognition, ocr_text comes first: clips scored earlier without it are scored again
        base = ["text_area", "text_area_mean", "text_boxes", "text_area_error"]
        return ["ocr_text", *base, "ocr_text_error"] if self.recognize else base

    # sampler protocol (frames.decode_clips)
    def frame_indices(self, num_frames_in_clip: int, fps: float) -> list[int]:
        if self.n == len(POSITIONS):
            return sorted({min(num_frames_in_clip - 1, int(p * num_frames_in_clip)) for p in POSITIONS})
        return sorted(set(uniform_indices(num_frames_in_clip, self.n)))  # each frame once in short clips

    def decode_size(self, width: int, height: int):
        return size_for_width(width, height, self.width)

    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        return frames[..., ::-1].copy()  # RGB -> BGR, what PP-OCR (and RapidOCR for arrays) expects

    def load(self):
        """The RapidOCR engine over the PP-OCR models in the rapidocr wheel (detection; recognition if asked)."""
        if self.engine is None:
            try:
                from rapidocr import RapidOCR
            except ImportError as e:
                raise CurateError("the text scorer needs rapidocr and onnxruntime: pip install 'curate[content]'") from e
            params = {"Global.log_level": "error", "Global.use_cls": False, "Global.use_rec": self.recognize,
                      "Global.text_score": self.text_score, "Det.box_thresh": self.box_thresh,
                      # frames are already small: never resize them up (RapidOCR's default scales the short side to 736)
                      "Det.limit_type": "max", "Det.limit_side_len": max(32, self.width)}
            if self.threads > 0:
                params["EngineConfig.onnxruntime.intra_op_num_threads"] = self.threads
            self.engine = RapidOCR(params=params)
        return self.engine

    def frame_text(self, frame: np.ndarray) -> tuple[float, int, list[str]]:
        """(text area, number of boxes, recognised lines) of one BGR frame."""
        out = self.load()(frame, use_det=True, use_cls=False, use_rec=self.recognize)
        boxes = getattr(out, "boxes", None)
        if boxes is None or len(boxes) == 0:
            return 0.0, 0, []
        txts = list(getattr(out, "txts", None) or ()) if self.recognize else [""] * len(boxes)
        kept = [(q, t) for q, t in zip(boxes, txts) if line_boxes([q], frame.shape[0], self.max_line)]
        lines = [t.strip() for _, t in kept if t and t.strip()]
        return text_area([q for q, _ in kept], frame.shape[0], frame.shape[1]), len(kept), lines

    def clip_text(self, frames: np.ndarray) -> dict[str, Any]:
        areas, counts, lines = [], [], []
        for f in frames:
            a, k, t = self.frame_text(f)
            areas.append(a)
            counts.append(k)
            lines.extend(t)
        row: dict[str, Any] = {"text_area": max(areas), "text_area_mean": float(np.mean(areas)),
                               "text_boxes": max(counts)}
        if self.recognize:
            row["ocr_text"] = "\n".join(dict.fromkeys(lines))
        return row

    def compute(self, root: Root, clip_ids: pa.Array) -> pa.Table:
        values: dict[str, dict] = {}
        errors: dict[str, str] = {}
        if len(clip_ids):
            self.load()
            decoded = decode_clips(root, self, clip_groups(root, clip_ids), workers=self.workers,
                                   frames_per_clip=frames_per_chunk(self.n))
            for c, frames, err in decoded:
                if err is not None:
                    errors[c["clip_id"]] = f"decode: {err}"
                    continue
                try:
                    values[c["clip_id"]] = self.clip_text(frames)
                except Exception as e:  # one frame the model chokes on never sinks the batch
                    errors[c["clip_id"]] = f"ocr: {short_error(e)}"
        for cid in clip_ids.to_pylist():
            if cid not in values and cid not in errors:
                errors[cid] = "clip is not an ok clip of the clips table"
        schema = {"text_area": pa.float64(), "text_area_mean": pa.float64(), "text_boxes": pa.int32()}
        if self.recognize:
            schema["ocr_text"] = pa.string()
        err_cols = ["text_area_error", *(["ocr_text_error"] if self.recognize else [])]
        return result_table(clip_ids, schema, values, errors, err_cols)
