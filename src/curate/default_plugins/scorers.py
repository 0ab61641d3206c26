"""Built-in scorers: caption alignment, technical properties, aesthetics, motion, near-duplicates."""

from curate import hookimpl


@hookimpl
def register_scorers(register):
    register("alignment", _make("curate.scorers", "AlignmentScorer"), columns=["<encoder>_sim"],
             description="cosine(clip embedding, caption embedding) for every embedding set (no model needed)",
             options={"encoder": "only this embedding set"})
    register("technical", _make("curate.scorers", "TechnicalScorer"),
             columns=["duration_s", "width", "height", "aspect", "fps"],
             description="clip duration, source resolution, aspect ratio and fps")
    register("aesthetic", _make("curate.scorers.aesthetic", "AestheticScorer"), columns=["aesthetic"],
             description="LAION improved aesthetic predictor (MLP) over CLIP ViT-L/14 frames, 1-10",
             options={"weights": "predictor checkpoint: URL (default: sac+logos+ava1-l14-linearMSE.pth), hub id, path",
                      "recipe": "internvid (4 uniform frames, max; default) or opensora (10/50/90%, mean)",
                      "frames": "override the recipe's frame count",
                      "clip_model": "open_clip architecture (default ViT-L-14)",
                      "clip_weights": "CLIP weights (default openai)", "model_config": "custom open_clip JSON",
                      "device": "auto, cpu, cuda", "batch_size": "clips per forward (default 32)"})
    register("motion", _make("curate.scorers.motion", "MotionScorer"), columns=["motion"],
             description="mean Farneback optical-flow magnitude (px/frame at 160 px width); ~0 for still clips",
             options={"pairs": "frame pairs per clip (default 4)", "width": "analysis width in px (default 160)"})
    register("dedup", _make("curate.scorers.dedup", "DedupScorer"), columns=["dup_sim", "dup_of"],
             description="near-duplicates across the root: max cosine to any better-scored clip (SemDeDup rule)",
             options={"encoder": "embedding set to compare (default: the only one)",
                      "by": "score column that ranks clips (default <encoder>_sim)",
                      "block": "rows per block (memory bound, default 4096)"})


def _make(module: str, cls: str):
    def factory(**options):
        import importlib

        return getattr(importlib.import_module(module), cls)(**options)

    return factory
