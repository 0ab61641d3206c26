"""The built-in `hf` captioner: Hugging Face transformers image-text-to-text models (VLMs).

``AutoModelForImageTextToText`` + ``AutoProcessor`` load any family transformers supports natively
(Qwen2-VL / Qwen2.5-VL / Qwen3-VL, LLaVA-OneVision, InternVL ``-hf`` checkpoints, SmolVLM2, Idefics3,
...). Each clip's ``frames`` uniformly sampled frames go into one chat message with the prompt: as
``frames`` images (``input=images``, default: every family takes it) or as one video
(``input=video``, the model's native video input, with ``video_fps`` as the sampling rate it is told).
The processor's own chat template builds the prompt, so the model sees what its authors trained it on.
Greedy decoding unless ``do_sample=true``. ``backend=vllm`` generates with vLLM instead (when the
``vllm`` package is installed: throughput on GPU nodes), from the same prompts and frames.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate.captioners import Caption, Captioner, CaptionerInfo
from curate.encoders.base import parse_bool, resolve_device
from curate.errors import CurateError, WeightsUnavailable
from curate.weights import is_offline

DEFAULT_WEIGHTS = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_PROMPT = ("Describe this video clip in one or two sentences: the setting, the main subjects and what "
                  "happens. Do not mention that it is a video.")
INPUTS = ("images", "video")
BACKENDS = ("transformers", "vllm")
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def fetch_help(weights: str) -> str:
    local = f"/models/{weights.rstrip('/').split('/')[-1]}"
    return (f"Fetch them on a machine with internet access: `hf download {weights} --local-dir {local}` "
            f"(huggingface_hub; older versions: `huggingface-cli download`), copy {local} to this machine and "
            f"pass -o weights={local}; or point HF_HOME at a cache that holds {weights}.")


def resolve_model_dir(weights: str) -> Path:
    """A local directory with the checkpoint: ``weights`` itself when it is a directory, else a hub snapshot
    (only from the local cache with ``CURATE_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``)."""
    spec = str(weights).strip()
    local = Path(spec.removeprefix("file://")).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise WeightsUnavailable(f"Captioner weights {spec!r} is a file: pass the model directory (config.json, "
                                 "*.safetensors, the tokenizer and processor files).")
    if spec.startswith(("/", "./", "../", "~", "file://")) or spec.count("/") != 1:
        raise WeightsUnavailable(f"Captioner weights {spec!r}: no such directory, and not a Hugging Face id "
                                 "(org/name). Pass a local model directory or a hub id.")
    try:
        import huggingface_hub as hub

        return Path(hub.snapshot_download(spec, local_files_only=is_offline(),
                                          allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model",
                                                          "*.tiktoken", "*.py"]))
    except Exception as e:  # offline, gated, missing repo, network: one message that says what to do
        why = "downloads are off (CURATE_OFFLINE / HF_HUB_OFFLINE) and it is not in the cache" if is_offline() \
            else f"the download failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        raise WeightsUnavailable(f"Captioner weights {spec!r} are not on this machine: {why}. " + fetch_help(spec)) \
            from e


def _torch_dtype(dtype: str, device: str):
    import torch

    d = str(dtype).lower()
    if d not in DTYPES:
        raise CurateError(f"hf captioner dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if d == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16}[d]


class HFCaptioner(Captioner):
    name = "hf"

    def __init__(self, device: str | None = "auto", weights: str = DEFAULT_WEIGHTS, prompt: str = DEFAULT_PROMPT,
                 frames: int | str = 8, input: str = "images", max_new_tokens: int | str = 128,
                 min_new_tokens: int | str = 0,
                 do_sample: bool | str = False, temperature: float | str = 0.7, top_p: float | str = 0.9,
                 num_beams: int | str = 1, repetition_penalty: float | str = 1.0, seed: int | str = 0,
                 dtype: str = "auto", size: int | str = 448, video_fps: float | str = 2.0,
                 backend: str = "transformers", gpu_memory_utilization: float | str = 0.85) -> None:
        super().__init__(device)
        if input not in INPUTS:
            raise CurateError(f"hf captioner input must be one of {', '.join(INPUTS)}, not {input!r}")
        if backend not in BACKENDS:
            raise CurateError(f"hf captioner backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if backend == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise CurateError("backend=vllm needs the vllm package, which is not installed: `pip install vllm` "
                                  "on the GPU node (it brings its own torch build), or use backend=transformers "
                                  "(the default).")
        if str(dtype).lower() not in DTYPES:
            raise CurateError(f"hf captioner dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.weights, self.prompt, self.input, self.backend = str(weights), str(prompt), input, backend
        self.frames, self.max_new_tokens, self.size = int(frames), int(max_new_tokens), int(size)
        self.min_new_tokens = min(int(min_new_tokens), self.max_new_tokens)
        if self.frames < 1 or self.max_new_tokens < 1:
            raise CurateError("hf captioner frames and max_new_tokens must be at least 1")
        self.do_sample, self.temperature, self.top_p = parse_bool(do_sample), float(temperature), float(top_p)
        self.num_beams, self.repetition_penalty, self.seed = int(num_beams), float(repetition_penalty), int(seed)
        self.dtype_name, self.video_fps = str(dtype).lower(), float(video_fps)
        self.gpu_memory_utilization = float(gpu_memory_utilization)
        self._model = self._processor = self._llm = None
        self._arch = ""
        self.load()  # here, not at the first batch: a missing checkpoint fails before any decoding

    # -- interface ---------------------------------------------------------------------------
    @property
    def info(self) -> CaptionerInfo:
        gen: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                               "num_beams": self.num_beams, "repetition_penalty": self.repetition_penalty}
        if self.min_new_tokens:
            gen["min_new_tokens"] = self.min_new_tokens
        if self.do_sample:
            gen.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return CaptionerInfo(self.name, self._arch, self.weights, self.prompt, self.frames, gen,
                             {"input": self.input, "backend": self.backend, "dtype": self.dtype_name,
                              "size": self.size, **({"video_fps": self.video_fps} if self.input == "video" else {})})

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """Longer side at most ``size`` px (the processor resizes further, as its model wants)."""
        long = max(width, height)
        if long <= self.size:
            return None
        s = self.size / long
        return max(2, round(width * s / 2) * 2), max(2, round(height * s / 2) * 2)

    def caption_batch(self, inputs: Sequence[np.ndarray]) -> list[Caption]:
        if self.backend == "vllm":
            return self._generate_vllm(inputs)
        return self._generate_transformers(inputs)

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        if self._processor is not None:
            return
        path = resolve_model_dir(self.weights)
        if not (path / "config.json").exists():
            raise WeightsUnavailable(f"Captioner weights {self.weights!r} ({path}) has no config.json: not a "
                                     "transformers model directory. " + fetch_help(self.weights))
        from transformers import AutoConfig, AutoProcessor

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            cfg = AutoConfig.from_pretrained(path, local_files_only=True)
            self._arch = (getattr(cfg, "architectures", None) or [type(cfg).__name__])[0]
            self._processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise CurateError(f"Captioner weights {self.weights!r}: transformers cannot load its config or processor "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:300]}). It needs a model of a family "
                              "transformers supports natively (AutoModelForImageTextToText).") from e
        tok = getattr(self._processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"  # decoder-only generation of a batch: pad on the left
        if self.backend == "vllm":
            self._load_vllm(path)
            return
        from transformers import AutoModelForImageTextToText

        self.device = resolve_device(self.device)
        self._dtype = _torch_dtype(self.dtype_name, self.device)
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=self._dtype, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise CurateError(f"Captioner weights {self.weights!r}: not loadable as an image-text-to-text model "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:300]}).") from e
        self._model = model.to(self.device).eval()
        gc = self._model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else getattr(tok, "eos_token_id", None)
        self._eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self._pad = gc.pad_token_id if gc.pad_token_id is not None else getattr(tok, "pad_token_id", None)

    def _load_vllm(self, path: Path) -> None:  # pragma: no cover - needs vllm and a GPU
        from vllm import LLM

        self._arch = f"{self._arch} (vllm)"
        limit = {"image": self.frames} if self.input == "images" else {"video": 1}
        dtype = "auto" if self.dtype_name == "auto" else {"fp32": "float32", "bf16": "bfloat16",
                                                           "fp16": "float16"}.get(self.dtype_name, self.dtype_name)
        self._llm = LLM(model=str(path), dtype=dtype, limit_mm_per_prompt=limit, seed=self.seed,
                        gpu_memory_utilization=self.gpu_memory_utilization)

    # -- generation --------------------------------------------------------------------------
    def _prompt_text(self, frames: np.ndarray) -> str:
        visual = [{"type": "image"} for _ in range(len(frames))] if self.input == "images" else [{"type": "video"}]
        messages = [{"role": "user", "content": [*visual, {"type": "text", "text": self.prompt}]}]
        return self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _generate_transformers(self, inputs: Sequence[np.ndarray]) -> list[Caption]:
        import torch

        texts = [self._prompt_text(f) for f in inputs]
        if self.input == "images":
            kw: dict[str, Any] = {"images": [list(f) for f in inputs]}
        else:
            from transformers.video_utils import VideoMetadata

            kw = {"videos": list(inputs), "do_sample_frames": False,
                  "video_metadata": [VideoMetadata(total_num_frames=len(f), fps=self.video_fps,
                                                   frames_indices=list(range(len(f)))) for f in inputs]}
        enc = self._processor(text=texts, return_tensors="pt", padding=True, **kw)
        enc = {k: (v.to(self.device, dtype=self._dtype) if torch.is_floating_point(v) else v.to(self.device))
               if hasattr(v, "to") else v for k, v in enc.items()}
        gen: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                               "num_beams": self.num_beams, "repetition_penalty": self.repetition_penalty}
        if self.min_new_tokens:
            gen["min_new_tokens"] = self.min_new_tokens
        if self.do_sample:
            torch.manual_seed(self.seed)
            gen.update(temperature=self.temperature, top_p=self.top_p)
        else:  # the model's own generation config may ask for sampling parameters: greedy means greedy
            gen.update(temperature=None, top_p=None, top_k=None)
        if self._pad is not None:
            gen["pad_token_id"] = self._pad
        with torch.inference_mode():
            out = self._model.generate(**enc, **gen)
        new = out[:, enc["input_ids"].shape[1]:].cpu()
        captions = []
        for row in new.tolist():
            n = len(row)
            for i, t in enumerate(row):
                if t in self._eos or (self._pad is not None and t == self._pad):
                    n = i
                    break
            truncated = n >= self.max_new_tokens
            text = self._processor.batch_decode([row[:n]], skip_special_tokens=True)[0]
            captions.append(Caption(text.strip(), n, truncated))
        return captions

    def _generate_vllm(self, inputs: Sequence[np.ndarray]) -> list[Caption]:  # pragma: no cover - needs vllm
        from PIL import Image
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=self.max_new_tokens, min_tokens=self.min_new_tokens,
                            temperature=self.temperature if self.do_sample else 0.0,
                            top_p=self.top_p if self.do_sample else 1.0, seed=self.seed,
                            repetition_penalty=self.repetition_penalty)
        prompts = []
        for f in inputs:
            mm = {"image": [Image.fromarray(x) for x in f]} if self.input == "images" else {"video": np.asarray(f)}
            prompts.append({"prompt": self._prompt_text(f), "multi_modal_data": mm})
        outs = self._llm.generate(prompts, sp, use_tqdm=False)
        return [Caption(o.outputs[0].text.strip(), len(o.outputs[0].token_ids), o.outputs[0].finish_reason == "length")
                for o in outs]
