"""The plugin registry: entry points in the group ``parallax`` -> pluggy -> named components by kind.

Built-ins ship as entry points of this distribution, so they load exactly like third-party
plugins. A plugin that fails to import, raises in a hook, or registers a name that is taken is
recorded as broken with its error; the others still load.

Environment:
- ``PARALLAX_LOAD_PLUGINS=a,b`` loads only these third-party plugins (empty: built-ins only).
- ``PARALLAX_DISABLE_PLUGINS=x,y`` blocks these.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

BUILTIN_DIST = "parallax-cws"


@dataclass
class PluginInfo:
    name: str  # entry-point name
    module: str
    dist: str | None
    version: str | None
    builtin: bool
    provides: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Entry:
    name: str
    cls: Any
    plugin: PluginInfo


class Registry:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("parallax")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in hookspecs.KINDS}
        self.skipped: dict[str, str] = {}  # distribution -> the variable that kept its plugin out

    # -- loading ---------------------------------------------------------------------------
    def load_entry_points(self) -> Registry:
        allow = os.environ.get("PARALLAX_LOAD_PLUGINS")
        allowed = None if allow is None else {s.strip() for s in allow.split(",") if s.strip()}
        blocked = {s.strip() for s in os.environ.get("PARALLAX_DISABLE_PLUGINS", "").split(",") if s.strip()}
        eps = sorted(
            entry_points(group="parallax"),
            key=lambda ep: (_dist_name(ep) != BUILTIN_DIST, _dist_name(ep) or "", ep.name),
        )
        for ep in eps:
            dist = _dist_name(ep)
            builtin = dist == BUILTIN_DIST
            if ep.name in blocked or (not builtin and allowed is not None and ep.name not in allowed):
                why = "PARALLAX_DISABLE_PLUGINS" if ep.name in blocked else "PARALLAX_LOAD_PLUGINS"
                note, key = f"plugin '{ep.name}' is kept out by {why}", dist or ep.name
                self.skipped[key] = f"{self.skipped[key]}, {note}" if key in self.skipped else note
                continue
            if ep.name in self.plugins:
                first = self.plugins[ep.name]
                if first.dist == dist:  # the same distribution seen twice on sys.path
                    continue
                # Two distributions claim one plugin name: the first keeps it, the second is reported.
                key = f"{ep.name} ({dist})"
                self.plugins[key] = PluginInfo(
                    key, ep.value, dist, _dist_version(ep), builtin,
                    error=f"entry-point name '{ep.name}' is already used by {first.dist}; rename one of them",
                )
                continue
            info = PluginInfo(ep.name, ep.value, dist, _dist_version(ep), builtin)
            try:
                module = ep.load()
            except Exception as e:  # a broken plugin must not take the rest down
                info.error = f"import failed: {type(e).__name__}: {e}"
                self.plugins[ep.name] = info
                continue
            self.add(module, info)
        for name in sorted((allowed or set()) - {ep.name for ep in eps}):
            self.plugins[name] = PluginInfo(name, "", None, None, False,
                                            error="named in PARALLAX_LOAD_PLUGINS, "
                                                  "but no installed package provides it")
        return self

    def add(self, module: Any, info: PluginInfo) -> None:
        """Register one plugin object (a module or instance with hookimpls) and collect its names."""
        self.plugins[info.name] = info
        try:
            self.pm.register(module, name=info.name)
            self.pm.check_pending()
        except Exception as e:
            info.error = f"invalid hooks: {e}"
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            return
        staged: list[tuple[str, str, Any]] = []
        for kind, hook in hookspecs.KINDS.items():
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if impl.plugin is not module:
                    continue
                info.hooks.append(hook)

                def register(name: str, cls: Any, _kind: str = kind) -> None:
                    staged.append((_kind, str(name), cls))

                try:
                    impl.function(register=register)
                except Exception as e:
                    info.error = f"{hook} raised {type(e).__name__}: {e}"
                    self.pm.unregister(module)
                    return
        for kind, name, _ in staged:
            taken = self.entries[kind].get(name)
            if taken is not None:
                info.error = (
                    f"registers {kind[:-1].replace('_', ' ')} '{name}', which plugin "
                    f"'{taken.plugin.name}' already registers; rename one of them"
                )
                self.pm.unregister(module)
                return
        for kind, name, cls in staged:
            self.entries[kind][name] = Entry(name, cls, info)
            info.provides.setdefault(kind, []).append(name)

    def remove(self, name: str) -> PluginInfo:
        """Undo ``add``: unregister plugin ``name`` and forget every name it provided."""
        if name not in self.plugins:
            raise PluginError(f"plugin '{name}' is not registered (registered: {', '.join(sorted(self.plugins))})")
        info = self.plugins.pop(name)
        module = self.pm.get_plugin(name)
        if module is not None:
            self.pm.unregister(module)
        for entries in self.entries.values():
            for provided in [n for n, e in entries.items() if e.plugin is info]:
                del entries[provided]
        return info

    # -- lookup ----------------------------------------------------------------------------
    def get(self, kind: str, name: str, where: str = "type") -> Any:
        entries = self.entries[kind]
        if name in entries:
            return entries[name].cls
        label = kind[:-1].replace("_", " ")
        broken = [p for p in self.plugins.values() if p.error]
        hint = difflib.get_close_matches(name, list(entries), n=1)
        msg = f"{where}: unknown {label} '{name}'"
        if hint:
            msg += f"; did you mean '{hint[0]}'?"
        msg += f" (registered: {', '.join(sorted(entries)) or 'none'})"
        if broken:
            msg += "; broken plugins: " + "; ".join(f"{p.name}: {p.error}" for p in broken)
        if self.skipped:
            msg += "; not loaded: " + "; ".join(sorted(self.skipped.values()))
        raise PluginError(msg)

    def entry(self, kind: str, name: str) -> Entry:
        self.get(kind, name)
        return self.entries[kind][name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])


def _dist_name(ep) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _dist_version(ep) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else None


_REGISTRY: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = Registry().load_entry_points()
    return _REGISTRY
