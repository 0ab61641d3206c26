"""Built-in `clip4clip` encoder (CLIP4Clip meanP on Hugging Face CLIP towers). Nothing heavy is imported here."""

from curate import hookimpl


@hookimpl
def register_encoders(register):
    register("clip4clip", _factory,
             description="CLIP4Clip meanP: 1-fps frames through a CLIP ViT, frame embeddings L2-normalised, "
                         "averaged, re-normalised; CLIP text tower for captions "
                         "(default Searchium-ai/clip4clip-webvid150k)",
             options={
                 "weights": "Hugging Face id (default Searchium-ai/clip4clip-webvid150k), local CLIPModel directory, "
                            "CLIP4Clip repo checkpoint pytorch_model.bin.<epoch> (path, URL or org/repo/file), "
                            "or 'random'",
                 "tokenizer": "CLIP tokenizer: hub id or local dir; default: the weights' own (HF layout) or "
                              "openai/clip-vit-base-patch32 (repo checkpoints); 'bundled' builds the OpenAI "
                              "CLIP tokenizer offline (default for weights=random)",
                 "fps": "frames sampled per second of clip (default 1; the video fps is truncated to an integer)",
                 "max_frames": "cap on frames per clip for sampling=fps, cut uniformly (linspace) "
                               "(default 64; 0 = no cap, like the Searchium notebook)",
                 "sampling": "fps (default: Searchium notebook, 1 frame per second) or uniform (CLIP4Clip training: "
                             "1-fps frames cut by linspace to `frames`)",
                 "frames": "frames per clip for sampling=uniform (default 12, CLIP4Clip's max_frames)",
                 "head": "similarity head; only meanP (default) is implemented",
                 "precision": "auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, fp16, bf16",
                 "config": "for weights=random: CLIPConfig JSON file or directory (default: ViT-B/32 CLIPConfig)",
             })


def _factory(**options):
    from curate.encoders.clip4clip import Clip4ClipEncoder

    return Clip4ClipEncoder(**options)
