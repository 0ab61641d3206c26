"""Built-in captioners. Nothing heavy is imported here: the factory imports the model code when called."""

from curate import hookimpl


@hookimpl
def register_captioners(register):
    register("hf", _hf,
             description="Hugging Face transformers image-text-to-text VLMs (Qwen2.5-VL / Qwen3-VL, LLaVA-OneVision, "
                         "InternVL -hf, SmolVLM2, ...), in process: N frames + a prompt -> a caption",
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
             })


    register("openai", _openai,
             description="a VLM behind an OpenAI-compatible chat-completions endpoint (vllm serve, SGLang, LMDeploy, "
                         "TGI, hosted APIs): frames as JPEG images or one video per request, many in flight",
             options={
                 "base_url": "the endpoint, e.g. http://gpu-node:8000/v1 (required)",
                 "model": "the model name the server serves (required; `curl BASE_URL/models`)",
                 "api_key_env": "name of the environment variable holding the API key (default: none, no key "
                                "sent); the key itself is never an option",
                 "prompt": "instruction given with the frames (default: as hf)",
                 "frames": "frames per clip, uniform (default 8)",
                 "input": "images (default: one image_url part per frame) or video (one video_url part of JPEG "
                          "frames: vLLM with Qwen2-VL / Qwen2.5-VL / Qwen3-VL, LLaVA-OneVision)",
                 "max_new_tokens": "max_tokens of each request (default 128)",
                 "min_new_tokens": "min_tokens (vLLM / SGLang; default 0: not sent)",
                 "do_sample": "false (default: temperature 0) or true",
                 "temperature": "with do_sample (default 0.7)", "top_p": "with do_sample (default 0.9)",
                 "seed": "with do_sample (default 0)",
                 "repetition_penalty": "default 1.0 (not sent); vLLM / SGLang extension",
                 "size": "frames are decoded with the longer side at most this many px (default 448)",
                 "jpeg_quality": "JPEG quality of the frames sent (default 90)",
                 "concurrency": "requests in flight at once (default 64: keeps a vLLM batch full)",
                 "retries": "retries of a request on 429, 5xx, resets and timeouts (default 6)",
                 "backoff": "exponential backoff base in seconds, with jitter (default 1); Retry-After wins",
                 "max_backoff": "longest wait between tries in seconds (default 60)",
                 "timeout": "seconds one request may take (default 300)",
                 "check_frames": "true (default): refuse a server whose prompt token count shows it dropped the "
                                 "frames (preflight, and every answer); false: unchecked",
                 "preflight": "true (default): check endpoint, key, model and frames at start",
                 "conn_id": "an Airflow connection instead of base_url/api_key_env: host = the endpoint, password "
                            "= the key, extra {\"model\": NAME} (optional)",
                 "extra_body": "JSON object merged into every request, e.g. {\"mm_processor_kwargs\": {\"fps\": 2}}",
             })


def _hf(**options):
    from curate.captioners.hf import HFCaptioner

    return HFCaptioner(**options)


def _openai(**options):
    from curate.captioners.openai import OpenAICaptioner

    return OpenAICaptioner(**options)
