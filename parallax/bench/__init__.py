"""Benchmarks behind ``parallax bench``: each prints a table, or JSON with ``--json``."""
from __future__ import annotations

import torch

from ..build import build_data, resolve_device
from ..errors import ConfigError
from ..model import build_model
from ..registry import get_registry


def build_k_loop_model(recipe, bench: str):
    """(registry, device, data, model) for a benchmark that needs a model with a K loop."""
    registry = get_registry()
    device = resolve_device(recipe.train)
    torch.manual_seed(recipe.seed)
    data = build_data(recipe, registry)
    model = build_model(recipe.model, data.info, registry).to(device)
    if not model.has_k_loop:
        raise ConfigError(f"model.type: bench {bench} needs a model with a K loop, not '{recipe.model.type}'")
    return registry, device, data, model


def widen(console, width: int = 132) -> None:
    """Let a table printed to a pipe or file keep its columns whole (a terminal keeps its own width)."""
    if not console.is_terminal:
        console.width = max(console.width, width)
