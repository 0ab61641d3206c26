"""The built-in `hf` captioner: Hugging Face transformers image-text-to-text models (VLMs).

``AutoModelForImageTextToText`` + ``AutoProcessor`` load any family transformers supports natively
(Qwen2-VL / Qwen2.5-VL / Qwen3-VL, LLaVA-OneVision, InternVL ``-hf`` checkpoints, SmolVLM2, Idefics3,
...). Each clip's ``frames`` uniformly sampled frames go into one chat message with the prompt: as
``frames`` images (``input=images``, default: every family takes it) or as one video
(``input=video``, the model's native video input, with ``video_fps`` as the sampling rate it is told).
The processor's own chat template builds the prompt, so the model sees what its authors trained it on.
Greedy decoding unless ``do_sample=true``.

The frames must reach the model: a chat template may drop a part it does not know and a processor may
ignore ``videos=``, and the model then captions the prompt alone, fluently. So at load a probe clip goes
through the processor, and so does every batch before ``generate``: its output must carry pixel values and
the family's visual placeholder tokens (at least one per frame for images, per clip for a video); a
family or mode that cannot take the frames is refused at load, naming what to use instead.

Serving a model for throughput (vLLM, SGLang, ...) is the `openai` captioner's job
(:mod:`curate.captioners.openai`): the in-process vLLM backend this captioner once had was removed, as it
had never run anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate.captioners import Caption, Captioner, CaptionerInfo, fit_longer_side
from curate.encoders.base import parse_bool, resolve_device
from curate.errors import CurateError, WeightsUnavailable
from curate.weights import is_offline

DEFAULT_WEIGHTS = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_PROMPT = ("Describe this video clip in one or two sentences: the setting, the main subjects and what "
                  "happens. Do not mention that it is a video.")
INPUTS = ("images", "video")
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
                 dtype: str = "auto", size: int | str = 448, video_fps: float | str = 2.0, **unknown: Any) -> None:
        super().__init__(device)
        if "backend" in unknown or "gpu_memory_utilization" in unknown:
            raise CurateError("The hf captioner generates with transformers only (its untested vLLM backend was "
                              "removed). For vLLM's throughput, serve the model (`vllm serve MODEL`) and caption "
                              "with -c openai -o base_url=http://HOST:8000/v1 -o model=MODEL.")
        if unknown:
            raise CurateError(f"hf captioner: unknown option(s) {', '.join(sorted(unknown))} "
                              "(`curate plugins` lists the options)")
        if input not in INPUTS:
            raise CurateError(f"hf captioner input must be one of {', '.join(INPUTS)}, not {input!r}")
        if str(dtype).lower() not in DTYPES:
            raise CurateError(f"hf captioner dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.weights, self.prompt, self.input = str(weights), str(prompt), input
        self.frames, self.max_new_tokens, self.size = int(frames), int(max_new_tokens), int(size)
        self.min_new_tokens = min(int(min_new_tokens), self.max_new_tokens)
        if self.frames < 1 or self.max_new_tokens < 1:
            raise CurateError("hf captioner frames and max_new_tokens must be at least 1")
        self.do_sample, self.temperature, self.top_p = parse_bool(do_sample), float(temperature), float(top_p)
        self.num_beams, self.repetition_penalty, self.seed = int(num_beams), float(repetition_penalty), int(seed)
        self.dtype_name, self.video_fps = str(dtype).lower(), float(video_fps)
        self._model = self._processor = None
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
                             {"input": self.input, "dtype": self.dtype_name,
                              "size": self.size, **({"video_fps": self.video_fps} if self.input == "video" else {})})

    @property
    def model(self):
        """The loaded transformers model (``AutoModelForImageTextToText``)."""
        return self._model

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """Longer side at most ``size`` px (the processor resizes further, as its model wants)."""
        return fit_longer_side(width, height, self.size)

    def caption_batch(self, inputs: Sequence[np.ndarray]) -> list[Caption]:
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
        self._refuse_blind_input()
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

    # -- generation --------------------------------------------------------------------------
    def _prompt_text(self, frames: np.ndarray) -> str:
        visual = [{"type": "image"} for _ in range(len(frames))] if self.input == "images" else [{"type": "video"}]
        messages = [{"role": "user", "content": [*visual, {"type": "text", "text": self.prompt}]}]
        return self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _encode(self, inputs: Sequence[np.ndarray]):
        """The processor's output for a batch of clips: prompt tokens and the frames as the model takes them."""
        inputs = [np.ascontiguousarray(f) for f in inputs]  # torch.from_numpy refuses negative strides
        texts = [self._prompt_text(f) for f in inputs]
        if self.input == "images":
            kw: dict[str, Any] = {"images": [list(f) for f in inputs]}
        else:
            from transformers.video_utils import VideoMetadata

            kw = {"videos": list(inputs), "do_sample_frames": False,
                  "video_metadata": [VideoMetadata(total_num_frames=len(f), fps=self.video_fps,
                                                   frames_indices=list(range(len(f)))) for f in inputs]}
        return self._processor(text=texts, return_tensors="pt", padding=True, **kw)

    def _placeholder_ids(self) -> set[int]:
        """The family's visual placeholder token ids (``<|image_pad|>``, ``<image>``, ``<|video_pad|>``, ...)."""
        p, tok = self._processor, getattr(self._processor, "tokenizer", None)
        ids = set()
        for kind in ("image", "video"):
            i = getattr(p, f"{kind}_token_id", None)
            if i is None and tok is not None and isinstance(getattr(p, f"{kind}_token", None), str):
                i = tok.convert_tokens_to_ids(getattr(p, f"{kind}_token"))
                i = None if i == getattr(tok, "unk_token_id", None) else i
            if isinstance(i, int):
                ids.add(i)
        return ids

    def check_frames(self, enc: Any, frames_per_clip: Sequence[int]) -> None:
        """Raise unless the processor output carries the clips' frames: non-empty pixel values, and in every
        prompt the family's visual placeholder tokens (one per frame at least for images, per clip for a video)."""
        pixels = [k for k, v in enc.items() if k.startswith("pixel_values") and hasattr(v, "numel") and v.numel()]
        mode = f"input={self.input}"
        if not pixels:
            raise CurateError(f"hf captioner: the {type(self._processor).__name__} output for {mode} has no pixel "
                              "values: the frames would not reach the model")
        ids = self._placeholder_ids()
        if not ids:
            return  # a processor that names no placeholder token: the pixel values are all that can be checked
        import torch

        found = torch.isin(enc["input_ids"], torch.tensor(sorted(ids))).sum(dim=1).tolist()
        for n, got in zip(frames_per_clip, found):
            need = n if self.input == "images" else 1
            if got < need:
                raise CurateError(f"hf captioner: the prompt built for {mode} has {got} visual placeholder tokens "
                                  f"for {n} frames: the chat template or the processor dropped the frames")

    def _refuse_blind_input(self) -> None:
        """At load: a probe clip through the processor; a family or mode that cannot take frames is refused."""
        alt = " Use -o input=images (every family takes the frames as images)." if self.input == "video" else ""
        if self.input == "video" and getattr(self._processor, "video_processor", None) is None:
            raise CurateError(f"hf captioner: {self._arch} ({type(self._processor).__name__}) has no video input, so "
                              f"input=video would caption the prompt alone.{alt}")
        probe = np.full((2, 56, 56, 3), 128, np.uint8)
        probe[:, :28] = 255
        try:
            self.check_frames(self._encode([probe]), [len(probe)])
        except CurateError as e:
            raise CurateError(f"{e} ({self._arch}: refused at load).{alt}") from e
        except Exception as e:  # the processor itself rejects the input
            raise CurateError(f"hf captioner: {self._arch} ({type(self._processor).__name__}) cannot take "
                              f"input={self.input} ({type(e).__name__}: {str(e).splitlines()[0][:200]}).{alt}") from e

    def _generate_transformers(self, inputs: Sequence[np.ndarray]) -> list[Caption]:
        import torch

        enc = self._encode(inputs)
        self.check_frames(enc, [len(f) for f in inputs])
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
