"""Unsafe (nudity) content with NudeNet's detector (``nudenet``'s ``320n.onnx``, inside the wheel).

``frames`` frames (default 4, spread uniformly over the clip) are decoded with the longer side at
the model's input size (320), padded to a square as NudeNet does, and run through the detector
(a YOLOv8n with 18 body-part classes, onnxruntime on CPU). Columns:

- ``nsfw``: the highest confidence of an *unsafe* class (by default the exposed genitalia, breast,
  buttocks and anus classes) anywhere in any sampled frame, 0-1 (max over frames: one unsafe frame
  makes the clip unsafe). Ordinary footage scores below 0.1;
- ``nsfw_classes``: the unsafe classes detected with at least ``min_score`` (default 0.3),
  comma-separated, most confident first ("" when none).

Options: ``unsafe=`` (comma-separated class names replacing the default list; the model's classes
are listed in its metadata), ``model=`` (another NudeNet ONNX export, e.g. the 640m one, with its
``size=``), ``frames=``, ``batch_size=`` (frames per forward), ``threads=`` (onnxruntime threads).
The 320n model is AGPL-3.0 (Ultralytics YOLOv8), as distributed in the ``nudenet`` wheel.

Frames go in as RGB, the order Ultralytics models are trained on; NudeNet's own ``detect()`` swaps
them to BGR on the way (``cvtColor(RGBA2BGR)`` then ``blobFromImage(swapRB=True)`` on a BGR image).
On matplotlib's ``grace_hopper.jpg`` the face class scores 0.79 in RGB and 0.62 as NudeNet passes it.
"""

from __future__ import annotations

import ast
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curate.encoders.base import uniform_indices
from curate.errors import CurateError
from curate.media.frames import batches, clip_groups, decode_clips
from curate.scorers import Scorer
from curate.scorers.pixels import frames_per_chunk, result_table, short_error, size_for_long_side
from curate.store import Root

UNSAFE = ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED",
          "ANUS_EXPOSED")


def shipped_model() -> str:
    """Path of the detector inside the installed ``nudenet`` package."""
    try:
        from importlib.resources import files

        path = files("nudenet") / "320n.onnx"
    except ModuleNotFoundError as e:
        raise CurateError("the nsfw scorer needs nudenet and onnxruntime: pip install 'curate[content]'") from e
    if not path.is_file():
        raise CurateError(f"nudenet is installed but its model {path} is missing: reinstall nudenet")
    return str(path)


def model_labels(session) -> list[str]:
    """Class names from an Ultralytics ONNX export's ``names`` metadata ({0: 'A', 1: 'B', ...})."""
    names = session.get_modelmeta().custom_metadata_map.get("names")
    if not names:
        raise CurateError("this ONNX model has no 'names' metadata: is it a NudeNet (Ultralytics) export?")
    d = ast.literal_eval(names)
    return [d[i] for i in sorted(d)]


def square(frame: np.ndarray, size: int) -> np.ndarray:
    """An RGB frame padded (bottom/right, black) to a square and resized to ``size``: float32 CHW in 0-1."""
    import cv2

    h, w = frame.shape[:2]
    s = max(h, w)
    if s != h or s != w:
        frame = cv2.copyMakeBorder(frame, 0, s - h, 0, s - w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    if s != size:
        frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_LINEAR)
    return np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float32) / 255.0


class NsfwScorer(Scorer):
    name = "nsfw"
    incremental = True
    #: scores each clip on its own (any subset of clips, in any batch); nothing needs the whole root
    per_clip: ClassVar[bool] = True

    def __init__(self, frames: int | str = 4, unsafe: str | list[str] | None = None, min_score: float | str = 0.3,
                 model: str | None = None, size: int | str | None = None, batch_size: int | str = 16,
                 threads: int | str = 0, workers: int | str = 2) -> None:
        self.n, self.min_score = max(1, int(frames)), float(min_score)
        names = unsafe.split(",") if isinstance(unsafe, str) else list(unsafe or [])  # a YAML list works too
        self.unsafe = tuple(c.strip() for c in names if c.strip()) or UNSAFE
        self.model, self.size = model, int(size) if size else None
        self.batch_size, self.threads, self.workers = max(1, int(batch_size)), int(threads), int(workers)
        self.session = None

    def columns(self, root: Root) -> list[str]:
        return ["nsfw", "nsfw_classes", "nsfw_error"]

    def load(self):
        if self.session is None:
            try:
                import onnxruntime as ort
            except ImportError as e:
                raise CurateError("the nsfw scorer needs onnxruntime: pip install 'curate[content]'") from e
            opts = ort.SessionOptions()
            if self.threads > 0:
                opts.intra_op_num_threads = self.threads
            path = self.model or shipped_model()
            self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
            self.labels = model_labels(self.session)
            unknown = [c for c in self.unsafe if c not in self.labels]
            if unknown:
                raise CurateError(f"nsfw unsafe classes {unknown} are not classes of {path} ({', '.join(self.labels)})")
            self.unsafe_idx = np.array([self.labels.index(c) for c in self.unsafe])
            if self.size is None:
                meta = self.session.get_modelmeta().custom_metadata_map
                self.size = int(ast.literal_eval(meta.get("imgsz", "[320, 320]"))[0])
            self.input_name = self.session.get_inputs()[0].name
        return self.session

    # sampler protocol (frames.decode_clips)
    def frame_indices(self, num_frames_in_clip: int, fps: float) -> list[int]:
        return sorted(set(uniform_indices(num_frames_in_clip, self.n)))  # each frame once in short clips

    def decode_size(self, width: int, height: int):
        return size_for_long_side(width, height, self.size or 320)

    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        return np.stack([square(f, self.size or 320) for f in frames])

    def class_scores(self, x: np.ndarray) -> np.ndarray:
        """Per frame, the highest confidence of each class over all anchors: [N, classes]."""
        out = self.load().run(None, {self.input_name: x})[0]  # [N, 4 + classes, anchors]
        return out[:, 4:, :].max(axis=2)

    def clip_row(self, scores: np.ndarray) -> dict[str, Any]:
        per_class = scores.max(axis=0)[self.unsafe_idx]
        hit = [(float(s), c) for s, c in zip(per_class, self.unsafe) if s >= self.min_score]
        return {"nsfw": float(per_class.max()), "nsfw_classes": ",".join(c for _, c in sorted(hit, reverse=True))}

    def compute(self, root: Root, clip_ids: pa.Array) -> pa.Table:
        values: dict[str, dict] = {}
        errors: dict[str, str] = {}
        if len(clip_ids):
            self.load()
            decoded = decode_clips(root, self, clip_groups(root, clip_ids), workers=self.workers,
                                   frames_per_clip=frames_per_chunk(self.n))
            for batch in batches(decoded, max(1, self.batch_size // self.n)):
                good = [(c, x) for c, x, err in batch if err is None]
                errors.update({c["clip_id"]: f"decode: {err}" for c, _, err in batch if err is not None})
                if not good:
                    continue
                try:
                    scores = self.class_scores(np.concatenate([x for _, x in good]))
                except Exception:  # find the clip the model refuses, score the others
                    for c, x in good:
                        try:
                            values[c["clip_id"]] = self.clip_row(self.class_scores(x))
                        except Exception as e:
                            errors[c["clip_id"]] = f"nsfw model: {short_error(e)}"
                    continue
                i = 0
                for c, x in good:
                    values[c["clip_id"]] = self.clip_row(scores[i:i + len(x)])
                    i += len(x)
        for cid in clip_ids.to_pylist():
            if cid not in values and cid not in errors:
                errors[cid] = "clip is not an ok clip of the clips table"
        return result_table(clip_ids, {"nsfw": pa.float64(), "nsfw_classes": pa.string()}, values, errors,
                            ["nsfw_error"])
