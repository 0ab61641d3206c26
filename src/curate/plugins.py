"""The one plugin manager: built-ins and entry-point plugins, registered the same way.

Built-in plugins live in :mod:`curate.default_plugins`; third-party packages declare

    [project.entry-points.curate]
    my_encoder = "my_pkg.curate_plugin"

``CURATE_PLUGINS=name1,name2`` restricts which entry-point plugins load (empty string: none),
like llm's ``LLM_LOAD_PLUGINS``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from curate import __version__, hookspecs
from curate.errors import CurateError

DEFAULT_PLUGINS = (
    "curate.default_plugins.clip",
    "curate.default_plugins.clip4clip",
    "curate.default_plugins.viclip",
    "curate.default_plugins.askvideos",
    "curate.default_plugins.splitters",
    "curate.default_plugins.scorers",
    "curate.default_plugins.search",
    "curate.default_plugins.captioners",
)

pm = pluggy.PluginManager("curate")
pm.add_hookspecs(hookspecs)

_loaded = False


@dataclass
class Component:
    """A registered encoder, splitter, scorer or captioner: a name, a factory and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str = ""
    options: dict[str, str] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    plugin: str = ""
    package: str = ""

    def create(self, **options: Any) -> Any:
        return self.factory(**options)

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("kind", "name", "description", "options", "plugin", "package")}
        if self.columns:
            d["columns"] = self.columns
        return d


def load_plugins() -> pluggy.PluginManager:
    """Register default plugins and setuptools entry points (once per process)."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    for mod_name in DEFAULT_PLUGINS:
        if importlib.util.find_spec(mod_name) is None:
            continue
        pm.register(importlib.import_module(mod_name), name=mod_name)
    allowed = os.environ.get("CURATE_PLUGINS")
    allow = None if allowed is None else {p.strip() for p in allowed.split(",") if p.strip()}
    for ep in importlib.metadata.entry_points(group="curate"):
        if allow is not None and ep.name not in allow:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
        except Exception as e:  # a broken plugin must not take the CLI down
            import warnings

            warnings.warn(f"curate plugin {ep.name!r} failed to load: {e}", stacklevel=1)
            continue
        pm.register(module, name=ep.name)
        dist = getattr(ep, "dist", None)
        if dist is not None:
            _plugin_packages[ep.name] = f"{dist.metadata['Name']} {dist.version}"
    return pm


_plugin_packages: dict[str, str] = {}


def _package_of(plugin_name: str) -> str:
    if plugin_name in _plugin_packages:
        return _plugin_packages[plugin_name]
    if plugin_name.startswith("curate."):
        return f"curate {__version__}"
    return ""


def _collect(kind: str, hook_name: str) -> dict[str, Component]:
    load_plugins()
    found: dict[str, Component] = {}
    for plugin in pm.get_plugins():
        impl = getattr(plugin, hook_name, None)
        if impl is None:
            continue
        plugin_name = pm.get_name(plugin) or getattr(plugin, "__name__", "?")

        def register(name: str, factory: Callable[..., Any], *, description: str = "",
                     options: dict[str, str] | None = None, columns: list[str] | None = None,
                     _plugin: str = plugin_name) -> None:
            found[name] = Component(kind, name, factory, description, dict(options or {}), list(columns or []),
                                    _plugin, _package_of(_plugin))

        impl(register=register)
    return found


def get_encoders() -> dict[str, Component]:
    return _collect("encoder", "register_encoders")


def get_splitters() -> dict[str, Component]:
    return _collect("splitter", "register_splitters")


def get_scorers() -> dict[str, Component]:
    return _collect("scorer", "register_scorers")


def get_captioners() -> dict[str, Component]:
    return _collect("captioner", "register_captioners")


def all_components() -> list[Component]:
    """Encoders, splitters, scorers, captioners; each kind sorted by name (pluggy calls hooks
    last-registered first)."""
    return [c for reg in (get_encoders(), get_splitters(), get_scorers(), get_captioners())
            for c in sorted(reg.values(), key=lambda c: c.name)]


def _get(kind: str, registry: dict[str, Component], name: str) -> Component:
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none"
        raise CurateError(f"No {kind} named {name!r}. Registered {kind}s: {known}. See `curate plugins`.")
    return registry[name]


def get_encoder(name: str) -> Component:
    return _get("encoder", get_encoders(), name)


def get_splitter(name: str) -> Component:
    return _get("splitter", get_splitters(), name)


def get_scorer(name: str) -> Component:
    return _get("scorer", get_scorers(), name)


def get_captioner(name: str) -> Component:
    return _get("captioner", get_captioners(), name)
