"""The pytest fixtures ``parallax.testing`` provides once a conftest enables it.

- ``tiny_recipe``: the path of a tiny recipe of built-in components, writing its runs under ``tmp_path``.
- ``make_tiny_recipe``: ``make_tiny_recipe(experts=[...], encoder=..., workspace=..., decoder=...)``
  writes the tiny recipe with those components swapped in and returns its path.
- ``register_plugin``: ``register_plugin(plugin, name=None)`` registers an in-process plugin for the
  test and unregisters it afterwards.
"""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from ..registry import PluginInfo
from .plugins import registered
from .recipes import write_tiny_recipe


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """Path to the tiny recipe; its ``out_dir`` is ``tmp_path / "run"``."""
    return write_tiny_recipe(tmp_path / "tiny.yaml", tmp_path / "run")


@pytest.fixture
def make_tiny_recipe(tmp_path: Path) -> Callable[..., Path]:
    """Factory for tiny recipes with components swapped in; each gets its own file and ``out_dir``."""
    made = 0

    def make(**components: Any) -> Path:
        nonlocal made
        made += 1
        return write_tiny_recipe(tmp_path / f"tiny-{made}.yaml", tmp_path / f"run-{made}", **components)

    return make


@pytest.fixture
def register_plugin() -> Iterator[Callable[..., PluginInfo]]:
    """``register_plugin(plugin, name=None) -> PluginInfo``; every plugin is unregistered after the test."""
    with ExitStack() as stack:
        yield lambda plugin, name=None: stack.enter_context(registered(plugin, name))
