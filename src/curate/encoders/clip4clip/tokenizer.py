"""The CLIP4Clip text tokenizer: a CLIPTokenizer from a folder, a hub repo, or built offline (``bundled``)."""

from __future__ import annotations

import gzip
from pathlib import Path

from curate.errors import WeightsUnavailable
from curate.weights import hub_file, is_hub_repo, resolve_weights, weights_help

__all__ = ["DEFAULT_TOKENIZER", "bundled_tokenizer", "has_tokenizer", "load_tokenizer"]

DEFAULT_TOKENIZER = "openai/clip-vit-base-patch32"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def bundled_tokenizer():
    """A ``CLIPTokenizer`` built offline from the OpenAI BPE file that open_clip ships.

    Same vocabulary (49408) and merges as ``openai/clip-vit-base-patch32``'s ``vocab.json``/``merges.txt``
    (the OpenAI ``SimpleTokenizer`` construction).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges)


def has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file()
                                                     and (folder / "merges.txt").is_file())


def _hub_tokenizer_dir(repo: str, what: str) -> Path:
    """Fetch the tokenizer files a hub repo has; its snapshot directory must end up with a usable set."""
    folder, first_error = None, None
    for f in TOKENIZER_FILES:
        try:
            folder = hub_file(repo, f, what).parent
        except WeightsUnavailable as e:
            first_error = first_error or e
    if folder is None or not has_tokenizer(folder):
        raise first_error or WeightsUnavailable(f"{repo} has no CLIP tokenizer files. " + weights_help(what))
    return folder


def load_tokenizer(spec: str):
    """``bundled``, a local tokenizer directory, or a Hugging Face id (files fetched offline-aware)."""
    from transformers import CLIPTokenizer

    spec = str(spec)
    if spec == "bundled":
        return bundled_tokenizer()
    what = f"clip4clip tokenizer {spec} (tokenizer=bundled builds the OpenAI CLIP tokenizer offline)"
    if is_hub_repo(spec):
        folder = _hub_tokenizer_dir(spec, what)
    else:
        folder = resolve_weights(spec, what=what)
        if folder.is_file():
            folder = folder.parent
    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise WeightsUnavailable(f"No CLIP tokenizer in {folder} ({type(e).__name__}: {str(e)[:200]}). "
                                 "Pass tokenizer=<dir or hub id> or tokenizer=bundled.") from e

