"""The pytest fixtures ``parallax.testing`` provides once a conftest enables it.

- ``tiny_recipe``: the path of a tiny recipe of built-in components, writing its runs under ``tmp_path``.
- ``make_tiny_recipe``: ``make_tiny_recipe(experts=[...], encoder=..., workspace=..., decoder=...)``
  writes the tiny recipe with those components swapped in and returns its path.
- ``register_plugin``: ``register_plugin(plugin, name=None)`` registers an in-process plugin for the
  test and unregisters it afterwards.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from ..registry import PluginInfo, get_registry
from .plugins import registered
from .recipes import tiny_recipe_data, write_tiny_recipe

#: where each component of the tiny recipe sits, and its registry kind
_PARTS = (("halting", "halting_rules"), ("encoder", "encoders"), ("workspace", "workspaces"), ("decoder", "decoders"))


def require_components(data: dict) -> None:
    """Fail the test in one line when the tiny recipe names components that are not registered (built-in
    plugins turned off by PARALLAX_DISABLE_PLUGINS or PARALLAX_LOAD_PLUGINS, say)."""
    model = data["model"]
    wanted = [("models", model["type"]), ("data_sources", data["data"]["type"])]
    wanted += [(kind, model[key]["type"]) for key, kind in _PARTS]
    wanted += [("experts", e["type"]) for e in model["experts"]]
    registry = get_registry()
    missing = [f"{kind[:-1]} '{name}'" for kind, name in wanted if name not in registry.entries.get(kind, {})]
    if missing:
        why = "; ".join(sorted(set(registry.skipped.values()))) or "no installed plugin provides them"
        pytest.fail(f"parallax.testing: the tiny recipe needs {', '.join(missing)} from parallax's built-in plugins "
                    f"({why}); enable them, or swap in your own with make_tiny_recipe(...)", pytrace=False)


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """Path to the tiny recipe; its ``out_dir`` is ``tmp_path / "run"``."""
    require_components(tiny_recipe_data(tmp_path / "run"))
    return write_tiny_recipe(tmp_path / "tiny.yaml", tmp_path / "run")


@pytest.fixture
def make_tiny_recipe(tmp_path: Path) -> Callable[..., Path]:
    """Factory for tiny recipes with components swapped in; each gets its own file and ``out_dir``."""
    made = 0

    def make(**components: Any) -> Path:
        nonlocal made
        made += 1
        require_components(tiny_recipe_data(tmp_path, **components))
        return write_tiny_recipe(tmp_path / f"tiny-{made}.yaml", tmp_path / f"run-{made}", **components)

    return make


@pytest.fixture
def register_plugin() -> Iterator[Callable[..., PluginInfo]]:
    """``register_plugin(plugin, name=None) -> PluginInfo``; every plugin is unregistered after the test."""
    with ExitStack() as stack:
        yield lambda plugin, name=None: stack.enter_context(registered(plugin, name))
