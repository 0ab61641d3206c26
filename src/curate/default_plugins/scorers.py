"""Built-in scorers: caption alignment, technical properties, aesthetics, motion, near-duplicates, on-screen text,
NSFW and cheap visual quality."""

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
                      "block": "rows per block (memory bound, default 4096)",
                      "method": "auto (exact below 20k clips, else clustered), exact (all pairs, N^2), clustered "
                                "(k-means, pairs within clusters: docs/dedup.md)",
                      "k": "clusters of the clustered method (default: about sqrt(clips))",
                      "boundary": "a clip also joins its second-nearest cluster when its cosine to that centroid "
                                  "is within this of the nearest's (default 0.01; none: off)",
                      "device": "auto (cuda when torch sees one, else numpy), numpy, cpu (torch), cuda",
                      "incremental": "compare only clips added since the stored plan (default true)"})
    register("text", _make("curate.scorers.text", "TextScorer"),
             columns=["text_area", "text_area_mean", "text_boxes", "ocr_text"],
             description="on-screen text with PP-OCR (rapidocr, ONNX in the wheel): fraction of the frame covered "
                         "by text boxes (max and mean over frames), box count; recognised text with recognize=true",
             options={"frames": "frames per clip (default 3: 10/50/90%)",
                      "width": "analysis width in px (default 640)",
                      "recognize": "also recognise the text into ocr_text (default false: detection only)",
                      "box_thresh": "detection box confidence (default 0.5)",
                      "text_score": "recognition confidence to keep a line (default 0.5)",
                      "max_line": "thickest box that counts as a text line, fraction of the frame height (default 0.2)",
                      "threads": "onnxruntime threads (default: all cores)"})
    register("nsfw", _make("curate.scorers.nsfw", "NsfwScorer"), columns=["nsfw", "nsfw_classes"],
             description="NudeNet 320n detector (ONNX in the nudenet wheel): max unsafe-class confidence over "
                         "frames, 0-1, and the unsafe classes found",
             options={"frames": "frames per clip (default 4, uniform)",
                      "min_score": "confidence for a class to be listed in nsfw_classes (default 0.3)",
                      "unsafe": "comma-separated unsafe classes (default: the exposed genitalia/breast/buttocks/anus)",
                      "model": "another NudeNet ONNX export (default: the wheel's 320n.onnx)",
                      "size": "model input size (default: from the model, 320)",
                      "batch_size": "frames per forward (default 16)", "threads": "onnxruntime threads"})
    register("quality", _make("curate.scorers.quality", "QualityScorer"),
             columns=["sharpness", "brightness", "contrast", "black_frac", "frozen_frac", "letterbox", "pillarbox"],
             description="no model: Laplacian-variance sharpness, brightness, contrast, black and frozen frame "
                         "fractions, letterbox/pillarbox bars, on a few small frames",
             options={"frames": "frames per clip (default 8, uniform)",
                      "width": "analysis width in px (default 256)",
                      "bar_level": "max mean luma of a bar row/column, 0-255 (default 24)",
                      "frozen_diff": "mean abs grey difference under which two frames are the same (default 1.0)"})


def _make(module: str, cls: str):
    def factory(**options):
        import importlib

        return getattr(importlib.import_module(module), cls)(**options)

    return factory
