"""The ViCLIP text tokenizer: OpenAI CLIP BPE with a 32-token context, as the reference tokenises."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ViCLIPTokenizer"]


class ViCLIPTokenizer:
    """CLIP BPE (open_clip's ``bpe_simple_vocab_16e6.txt.gz``): SOT + BPE + EOT, zero-padded to the
    context length; longer captions are cut and EOT is forced at the last position."""

    def __init__(self, context_length: int = 32, bpe_path: str | None = None) -> None:
        import regex
        from open_clip.tokenizer import SimpleTokenizer, basic_clean, default_bpe

        self.context_length = context_length
        tok = SimpleTokenizer(bpe_path or default_bpe(), context_length=context_length, clean="lower")
        self.sot, self.eot = tok.sot_token_id, tok.eot_token_id  # 49406, 49407
        # open_clip spells the special tokens <start_of_text>/<end_of_text>; OpenAI's tokenizer, which ViCLIP
        # ships, spells them <|startoftext|>/<|endoftext|> and lets them through as single tokens. Use
        # OpenAI's spelling so that captions containing either string tokenise as the reference does.
        specials = {"<|startoftext|>": self.sot, "<|endoftext|>": self.eot}
        tok.encoder.update(specials)
        tok.cache = {t: t for t in specials}
        tok.pat = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
        # whitespace as the reference cleans it (regex \s+, which differs from str.split on a few characters)
        tok.clean_fn = lambda text: regex.sub(r"\s+", " ", basic_clean(text)).strip().lower()
        self._tok = tok

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.sot, *self._tok.encode(str(text)), self.eot]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            out[i, : len(ids)] = ids
        return out
