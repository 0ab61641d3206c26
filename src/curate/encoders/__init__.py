"""Encoders: the interface (:mod:`curate.encoders.base`), the built-in models, and building one from its plugin.

:func:`load_encoder` turns a registered encoder's name and ``-o`` options into an instance; :func:`cached_encoder`
keeps the last two per process (the encoder an embedding set's own similarity needs is loaded once, not per
batch). Both sit beside the encoders rather than in a stage, because stages, embedding sets and scorers all
build encoders.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from curate.encoders.base import Encoder
from curate.errors import CurateError
from curate.plugins import get_encoder

__all__ = ["DECODERS", "cached_encoder", "encoder_loads", "encoder_lock", "load_encoder", "overrides_similarity"]

#: options every encoder takes, handled here rather than by the plugin
DECODERS = ("decord", "ffmpeg")
#: encoders this process created (:func:`encoder_loads`): a resident worker reports the loads it caused
_LOADS = [0]


def encoder_loads() -> int:
    """How many encoders :func:`load_encoder` has created in this process (model loads)."""
    return _LOADS[0]


def load_encoder(encoder: str, options: dict[str, Any] | None = None, device: str = "auto"):
    """Create an encoder from its plugin. ``decoder=decord|ffmpeg`` (any encoder) picks how clip frames are
    read: decord's random access (default), or one sequential ffmpeg decode per source (what
    `curate process` uses, so that its embeddings equal `curate embed -o decoder=ffmpeg`)."""
    options = dict(options or {})
    decoder = str(options.pop("decoder", "decord"))
    if decoder not in DECODERS:
        raise CurateError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    enc = get_encoder(encoder).create(device=device, **options)
    _LOADS[0] += 1
    if decoder != "decord" or not hasattr(enc, "decoder"):
        enc.decoder = decoder
    return enc


def overrides_similarity(enc: Any) -> bool:
    """Whether an encoder's class overrides :meth:`Encoder.similarity` (then that is the set's similarity)."""
    fn = getattr(type(enc), "similarity", None)
    return fn is not None and fn is not Encoder.similarity


_ENCODERS: OrderedDict[tuple, Any] = OrderedDict()
#: held while a cached encoder is created and while one runs (one model, many reader threads)
encoder_lock = threading.RLock()


def cached_encoder(encoder: str, options: dict[str, str], device: str):
    """The encoder of ``(encoder, options, device)``, created once per process (two kept)."""
    key = (encoder, json.dumps(options, sort_keys=True), device)
    with encoder_lock:
        enc = _ENCODERS.get(key)
        if enc is None:
            enc = load_encoder(encoder, options, device)
            _ENCODERS[key] = enc
            while len(_ENCODERS) > 2:
                _ENCODERS.popitem(last=False)
        else:
            _ENCODERS.move_to_end(key)
        return enc
