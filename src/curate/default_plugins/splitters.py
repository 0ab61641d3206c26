"""Built-in scene splitters (PySceneDetect detectors, and `none` for pre-cut clips)."""

from __future__ import annotations

from curate import hookimpl

COMMON = {
    "threshold": "detector threshold (content: 27, adaptive: 3.0, threshold: 12)",
    "min_scene_len": "shortest scene the detector reports, in frames (default 15)",
}


@hookimpl
def register_splitters(register):
    register("content", lambda **o: _scenedetect("content", **o),
             description="PySceneDetect ContentDetector: hard cuts from HSV/luma frame differences (default)",
             options={**COMMON, "luma_only": "use brightness only (true/false)"})
    register("adaptive", lambda **o: _scenedetect("adaptive", **o),
             description="PySceneDetect AdaptiveDetector: content score relative to a rolling average (fast motion)",
             options={**COMMON, "window_width": "frames on each side of the rolling window (default 2)",
                      "min_content_val": "minimum content score for a cut (default 15)"})
    register("threshold", lambda **o: _scenedetect("threshold", **o),
             description="PySceneDetect ThresholdDetector: fades to/from black by mean brightness",
             options={**COMMON, "fade_bias": "-1..1, where in the fade the cut is placed (default 0)"})
    register("none", lambda **o: _whole,
             description="no detection: the whole source is one scene (pre-cut clips; --max-clip-s still applies)")


def _whole(path, fps: float, num_frames: int):
    return [(0, num_frames)]


def _scenedetect(kind: str, **options):
    from curate.split import SceneDetectSplitter

    return SceneDetectSplitter(kind, **options)
