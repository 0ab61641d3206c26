"""Tiny randomly initialised VLMs saved in the real Hugging Face format, built offline: Qwen2.5-VL (images and
video), LLaVA-1.5 (images only) and LLaVA-OneVision (images and video). The Qwen2.5-VL one:

config.json + model.safetensors + generation_config.json, a byte-level BPE tokenizer (tokenizer.json:
printable ASCII bytes and Qwen's special tokens), the Qwen2-VL image and video processors and a
Qwen-style chat template: what `AutoProcessor` / `AutoModelForImageTextToText.from_pretrained(dir)` load
from a real checkpoint, about 100 k parameters. Used by tests/test_caption.py, tests/test_dags.py and
bench/bench_caption.py.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer(special: list[str], **tokens: str):
    """A byte-level BPE over printable ASCII ('Ġ' is the space byte, 'Ċ' the newline) with ``special`` first and
    no merges: deterministic (a trained vocabulary is not: ties), and whatever a random model generates decodes
    to readable text. ``tokens``: the tokenizer's eos/pad/bos/unk tokens. Returns (tokenizer, id of each special)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*special, "Ċ", "Ġ", *(chr(b) for b in range(33, 127))])}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens(special)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, **tokens)
    return tok, {t: tok.convert_tokens_to_ids(t) for t in special}


def build_tiny_qwen2_5_vl(path: Path, *, seed: int = 0, pixels: int = 56 * 56) -> Path:
    """Write the checkpoint into ``path`` (created) and return it. ``pixels``: image/video frame area the
    processors resize to (56x56 -> 4 visual tokens per frame pair)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok, ids = byte_tokenizer(SPECIAL, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels),
        video_processor=Qwen2VLVideoProcessor(size={"shortest_edge": pixels, "longest_edge": pixels}),
        tokenizer=tok, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(path)
    cfg = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 1024,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
                     "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                       "fullatt_block_indexes": [0], "window_size": 56},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]  # as Qwen's checkpoints
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(path)
    return path


#: LLaVA-1.5's chat template in spirit: an image part becomes <image>, anything else that is not text (a video
#: part) is dropped silently, as the real template does; so is what a video-less family does with input=video
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_llava(path: Path, *, seed: int = 0) -> Path:
    """A tiny random LLaVA (CLIP vision tower + Llama; image input only, no video processor) in the real format:
    28x28 images, 4 patch tokens per image."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok, ids = byte_tokenizer(special, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tok, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE)
    processor.save_pretrained(path)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=28, patch_size=14, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                                bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"]),
        image_token_index=ids["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.save_pretrained(path)
    return path


def build_tiny_llava_onevision(path: Path, *, seed: int = 0) -> Path:
    """A tiny random LLaVA-OneVision (SigLIP vision tower + Qwen2; images and video) in the real format:
    28x28 tiles, 4 patch tokens per tile, its own image and video processors and chat-template placeholders."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tok, ids = byte_tokenizer(special, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    template = CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\n").replace(
        "<|vision_start|><|video_pad|><|vision_end|>", "<video>\n")
    pinpoints = [[28, 28]]
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": 28, "width": 28}),
        tokenizer=tok, num_image_tokens=4, vision_feature_select_strategy="full", chat_template=template)
    processor.save_pretrained(path)
    cfg = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=28, patch_size=14),
        text_config=Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        image_token_index=ids["<image>"], video_token_index=ids["<video>"], vision_feature_select_strategy="full",
        vision_feature_layer=-1, image_grid_pinpoints=pinpoints)
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(path)
    return path
