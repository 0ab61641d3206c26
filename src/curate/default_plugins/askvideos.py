"""Built-in plugin: the AskVideos-VideoCLIP encoder (Video-Qformer, a stack of query vectors per clip).

Registration only: torch and the model load when a stage asks for ``askvideos``.
"""

from __future__ import annotations

from typing import Any

from curate import hookimpl

OPTIONS = {
    "weights": "AskVideos checkpoint: hub id, URL or path (default "
    "AskYoutube/AskVideos-VideoCLIP-v0.2/askvideos_clip_v0.2.pth; v0.1/v0.3 work too), a complete "
    "{'model': state_dict} file, or 'random' for a demo with random weights",
    "eva_weights": "EVA ViT-g file (default: LAVIS eva_vit_g.pth URL); read only when weights lacks the image encoder",
    "qformer_weights": "BLIP-2 Q-Former file (default: LAVIS blip2_pretrained_flant5xxl.pth URL); read only "
    "when weights lacks ln_vision/query_tokens/Qformer",
    "tokenizer": "BERT-uncased tokenizer: local folder or hub id (default bert-base-uncased)",
    "config": "JSON with sizes the tensors do not reveal (head counts), or the sizes of a random model",
    "frames": "frames per clip, uniform from frame 0 (default 16; shorter clips give all their frames)",
    "image_size": "frame size in pixels; frames are squashed to a square (default: the checkpoint's, 224)",
    "precision": "auto (fp16 autocast on CUDA as the reference, fp32 on CPU), fp32, fp16 or bf16",
}


def _create(**options: Any):
    from curate.encoders.askvideos import AskVideosEncoder

    return AskVideosEncoder(**options)


@hookimpl
def register_encoders(register):
    """Register ``askvideos``: AskVideos-VideoCLIP, 16 frames -> [32, 1024] query embeddings, max-over-queries ITC."""
    register(
        "askvideos",
        _create,
        description="AskVideos-VideoCLIP Video-Qformer (EVA ViT-g + BLIP-2 Q-Former + video Q-Former): "
        "16 frames at 224 px -> 32 query vectors of 1024-d; score = best query's cosine with the caption",
        options=OPTIONS,
    )
