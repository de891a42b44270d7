"""``registered``: add a plugin to the process-wide registry for the length of a ``with`` block.

An installed plugin is found through its entry point. Before you package one (in a notebook, or
to test a deliberately broken plugin), register the object that carries its hook implementations
here: recipes then resolve its names exactly as they would once it is installed.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import PluginError
from ..registry import PluginInfo, Registry, get_registry


@contextmanager
def registered(plugin: Any, name: str | None = None, registry: Registry | None = None) -> Iterator[PluginInfo]:
    """Register ``plugin`` (a module or object with ``@parallax.hookimpl`` functions); unregister on exit.

    ``name`` is what ``parallax plugins`` lists (default: the module's name). A plugin that fails
    to register (a hook raises, or a name is taken) raises ``PluginError`` with the reason.
    """
    registry = registry or get_registry()
    name = name or getattr(plugin, "__name__", type(plugin).__name__)
    if name in registry.plugins:
        raise PluginError(f"plugin '{name}' is already registered; register this one under another name")
    module = getattr(plugin, "__name__", type(plugin).__module__)
    info = PluginInfo(name=name, module=module, dist=None, version=None, builtin=False)
    registry.add(plugin, info)
    try:
        if info.error:
            raise PluginError(f"plugin '{name}': {info.error}")
        yield info
    finally:
        registry.remove(name)
