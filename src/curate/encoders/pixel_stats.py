"""The per-channel mean/std (RGB, on 0-1 pixels) that the encoders normalise frames with.

``clip``, ``clip4clip`` and ``askvideos`` use OpenAI CLIP's statistics (also BLIP-2's and EVA's);
``viclip`` uses ImageNet's, as the InternVid demo does. Each encoder keeps its own resize and crop:
they reproduce different references (open_clip, transformers' CLIPImageProcessor, decord's squash).
"""

from __future__ import annotations

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
