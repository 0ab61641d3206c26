"""The AskVideos text tokenizer: BERT-uncased plus BLIP-2's ``[DEC]`` token, and a fallback for random-weight demos."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from curate.encoders.askvideos.config import bert_overrides
from curate.errors import WeightsUnavailable
from curate.weights import is_offline, weights_help

__all__ = ["DEFAULT_TOKENIZER", "TEXT_MAX_LENGTH", "load_tokenizer"]

DEFAULT_TOKENIZER = "bert-base-uncased"
TEXT_MAX_LENGTH = 320  # hard-coded in the reference's embed_text_itc


def _fallback_vocab() -> list[str]:
    """A character-level BERT-uncased-shaped vocabulary for random-weight demos without the real one."""
    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    return specials + chars + ["##" + c for c in chars]


def load_tokenizer(spec: str | None, *, allow_fallback: bool = False):
    """``BertTokenizer`` (lower case) plus the ``[DEC]`` bos token, as BLIP-2's ``init_tokenizer``.

    ``spec`` is a local folder or a hub id (default ``bert-base-uncased``); offline mode only reads caches.
    Returns ``(tokenizer, bert_config_overrides, description)``; the overrides come from a ``config.json``
    in a local folder (the reference reads BertConfig from the same name as the tokenizer).
    """
    from transformers import BertTokenizer

    spec = str(spec or DEFAULT_TOKENIZER)
    local = Path(spec).expanduser()
    overrides: dict[str, Any] = {}
    try:
        if local.exists():
            tok = BertTokenizer.from_pretrained(str(local), do_lower_case=True)
            if (local / "config.json").is_file():
                overrides = bert_overrides(json.loads((local / "config.json").read_text()))
        else:
            kwargs = {"local_files_only": True} if is_offline() else {}
            tok = BertTokenizer.from_pretrained(spec, do_lower_case=True, **kwargs)
        if tok.vocab_size <= len(tok.all_special_tokens) + 1:
            # transformers 5 returns a special-tokens-only tokenizer instead of failing when vocab.txt is absent
            raise FileNotFoundError(f"no vocab.txt found for {spec!r} ({tok.vocab_size} tokens)")
        desc = spec
    except Exception as e:
        if not allow_fallback:
            raise WeightsUnavailable(
                f"AskVideos: could not load the BERT tokenizer {spec!r} ({type(e).__name__}: {e}). "
                "Pass tokenizer=/path/to/bert-base-uncased (a folder with vocab.txt). " + weights_help("the tokenizer")
            ) from e
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="curate-askvideos-vocab-"))
        (folder / "vocab.txt").write_text("\n".join(_fallback_vocab()) + "\n")
        tok = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
        desc = "built-in character vocabulary (random weights only)"
        warnings.warn(f"AskVideos: tokenizer {spec!r} unavailable ({type(e).__name__}); random-weight demo uses "
                      "a character-level vocabulary.", stacklevel=3)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    return tok, overrides, desc

