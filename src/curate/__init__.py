"""curate: turn raw web video into curated, annotated video-text training sets."""

import pluggy

__version__ = "0.1.0"

#: Mark plugin hook implementations with ``@curate.hookimpl`` (see :mod:`curate.hookspecs`).
hookimpl = pluggy.HookimplMarker("curate")

__all__ = ["__version__", "hookimpl"]
