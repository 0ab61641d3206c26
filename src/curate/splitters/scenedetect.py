"""PySceneDetect's detectors (``content``, ``adaptive``, ``threshold``) as a splitter: fed frame by frame from the
one decode the split stage runs (:func:`curate.splitters.base.track_source`), hard cuts only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.media.video import Stream
from curate.splitters.base import track_source

#: detector constructor arguments accepted as -o key=value (with their types)
_OPTION_TYPES = {"threshold": float, "min_scene_len": int, "luma_only": "bool", "window_width": int,
                 "min_content_val": float, "fade_bias": float, "adaptive_threshold": float}


def _coerce(options: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in options.items():
        t = _OPTION_TYPES.get(k)
        if t is None:
            raise CurateError(f"Unknown splitter option {k!r} (known: {', '.join(sorted(_OPTION_TYPES))}).")
        out[k] = (str(v).lower() in {"1", "true", "yes"}) if t == "bool" else t(v)
    return out


class SceneDetectSplitter:
    """PySceneDetect detector run over the source; returns frame ranges covering the video."""

    def __init__(self, kind: str, **options: Any) -> None:
        self.kind = self.name = kind
        self.options = _coerce(options)

    def make_detector(self):
        import scenedetect as sd

        o = dict(self.options)
        if self.kind == "content":
            return sd.ContentDetector(**o)
        if self.kind == "adaptive":
            if "threshold" in o:
                o["adaptive_threshold"] = o.pop("threshold")
            return sd.AdaptiveDetector(**o)
        if self.kind == "threshold":
            return sd.ThresholdDetector(**o)
        raise CurateError(f"unknown detector {self.kind!r}")

    def tracker(self, fps: float, width: int, height: int) -> SceneDetectTracker:
        return SceneDetectTracker(self.make_detector(), fps, width, height)

    def __call__(self, path: Path, fps: float, num_frames: int) -> list[tuple[int, int]]:
        """One decode pass: ffmpeg decodes and downscales (threaded, in C), the detector sees every frame."""
        return track_source(self, path, fps, num_frames)[0]


class SceneDetectTracker:
    """A PySceneDetect detector fed frame by frame: hard cuts (boundaries ``(c, c)``), no transition frames.

    ``skip_loop_filter``: its frames are decoded without deblocking, which a cut detector does not need
    (`curate split` then costs about one `ffmpeg -f null` decode; `curate process` decodes with it, for the encoder).
    """

    skip_loop_filter = True

    def __init__(self, detector, fps: float, width: int, height: int) -> None:
        self.detector = detector
        self.fps = float(fps)  # FrameTimecode refuses an int rate
        self.streams = [detect_stream(width, height)]
        self.transitions: list[dict] = []
        self.n = 0
        self.last = None

    def push(self, frames: tuple) -> list[tuple[int, int]]:
        import scenedetect as sd

        self.last = sd.FrameTimecode(self.n, self.fps)
        self.n += 1
        return self._cuts(self.detector.process_frame(self.last, frames[0]))

    def finish(self) -> list[tuple[int, int]]:
        return self._cuts(self.detector.post_process(self.last)) if self.last is not None else []

    def _cuts(self, cuts) -> list[tuple[int, int]]:
        out = [(c.frame_num, c.frame_num) for c in cuts]
        self.transitions += [{"start_frame": c, "end_frame": c, "kind": "cut", "score": None} for c, _ in out]
        return out


#: detectors see frames this wide (PySceneDetect's own auto-downscale aims at 256 px too)
DETECT_WIDTH = 256


def detect_stream(width: int, height: int, detect_width: int = DETECT_WIDTH):
    """The frames scene detectors see: BGR, ``detect_width`` px wide, fast bilinear downscale."""
    w = min(detect_width, width) // 2 * 2 or 2
    return Stream(w, max(2, int(round(height * w / width / 2)) * 2), "bgr24", "fast_bilinear")
