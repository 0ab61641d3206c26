"""Built-in `viclip` encoder (ViCLIP from InternVid: joint spatiotemporal ViT over 8 frames + CLIP text tower)."""

from curate import hookimpl


@hookimpl
def register_encoders(register):
    register("viclip", _factory,
             description="ViCLIP (InternVid): one joint spatiotemporal ViT embedding per clip from 8 frames; "
                         "CLIP text tower (32 tokens) for captions",
             options={
                 "weights": "OpenGVLab/ViCLIP/ViClip-InternVid-10M-FLT.pth (default for size=l; gated on the hub), "
                            "OpenGVLab/ViCLIP-L-14-hf or OpenGVLab/ViCLIP-B-16-hf (default for size=b), a local "
                            ".pth/.safetensors file or directory, an https URL, a hub id org/repo[/file], or "
                            "'random' (randomly initialised, for tests and offline demos)",
                 "size": "l (ViT-L/14, 768-d, default) or b (ViT-B/16, 512-d); a checkpoint's shapes decide, "
                         "size= only picks the default weights / random architecture and is checked",
                 "frames": "frames per clip, middle of equal segments (default and only supported value: the "
                           "checkpoint's 8; 1 works too)",
                 "image_size": "frame size in pixels (default: the checkpoint's, 224); other values only with "
                               "weights=random",
                 "config": "JSON file of hyper-parameters (ViCLIPConfig field names, or the reference's "
                           "{'vision': {...}, 'text': {...}} names, or {'size': 'l'|'b'}); needed for non-standard "
                           "head counts, which checkpoint shapes cannot tell",
                 "precision": "auto (bf16, else fp16 autocast on CUDA; fp32 on CPU), fp32, fp16, bf16",
             })


def _factory(**options):
    from curate.encoders.viclip import ViCLIPEncoder

    return ViCLIPEncoder(**options)
