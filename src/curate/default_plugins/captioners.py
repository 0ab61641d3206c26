"""Built-in captioners. Nothing heavy is imported here: the factory imports the model code when called."""

from curate import hookimpl


@hookimpl
def register_captioners(register):
    register("hf", _hf,
             description="Hugging Face transformers image-text-to-text VLMs (Qwen2.5-VL / Qwen3-VL, LLaVA-OneVision, "
                         "InternVL -hf, SmolVLM2, ...): N frames + a prompt -> a caption; optional vLLM backend",
             options={
                 "weights": "Hugging Face id (default Qwen/Qwen2.5-VL-3B-Instruct) or a local model directory",
                 "prompt": "instruction given with the frames (default: describe the clip in one or two sentences)",
                 "frames": "frames per clip, uniform (default 8)",
                 "input": "images (default: the frames as images, every family) or video (the model's video input)",
                 "video_fps": "with input=video: the frame rate the model is told (default 2)",
                 "max_new_tokens": "generation limit (default 128)",
                 "min_new_tokens": "generate at least this many tokens (default 0; benchmarks)",
                 "do_sample": "false (default: greedy) or true",
                 "temperature": "with do_sample (default 0.7)", "top_p": "with do_sample (default 0.9)",
                 "seed": "with do_sample (default 0)", "num_beams": "beam search width (default 1)",
                 "repetition_penalty": "default 1.0 (off)",
                 "dtype": "auto (bf16/fp16 on CUDA, float32 on CPU), float32, bfloat16, float16",
                 "size": "decode frames with the longer side at most this many px (default 448)",
                 "backend": "transformers (default) or vllm (needs the vllm package)",
                 "gpu_memory_utilization": "backend=vllm: share of GPU memory vLLM may take (default 0.85)",
             })


def _hf(**options):
    from curate.captioners.hf import HFCaptioner

    return HFCaptioner(**options)
