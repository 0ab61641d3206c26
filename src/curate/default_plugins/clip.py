"""Built-in `clip` encoder (open_clip, per-frame features mean-pooled)."""

from curate import hookimpl


@hookimpl
def register_encoders(register):
    register("clip", _factory,
             description="open_clip image tower per frame (video_features style), mean-pooled; text tower for captions",
             options={
                 "model": "open_clip architecture, e.g. ViT-B-32 (default), ViT-L-14, or an OpenAI name ViT-B/32",
                 "weights": "open_clip pretrained tag (openai, default), Hugging Face id org/repo, local checkpoint "
                            "path, URL, or 'random'",
                 "frames": "frames sampled uniformly per clip (default 8)",
                 "model_config": "path to an open_clip model JSON config for a custom architecture",
                 "precision": "auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, fp16, bf16",
             })


def _factory(**options):
    from curate.encoders.clip import ClipEncoder

    return ClipEncoder(**options)
