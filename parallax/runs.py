"""Opening a trained run for ``parallax eval``, ``generate`` and ``bench generate``.

A run directory (``out_dir``) or one of its ``step-XXXXXXXX/`` checkpoints -> the recipe the run
was trained with (the checkpoint's ``config.yaml``), its data source with the files it saved
restored (the tokenizer), and the model with the checkpoint's weights, in eval mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .errors import CheckpointError
from .model import build_model
from .protocols import DataSource
from .recipe import load_recipe
from .registry import get_registry
from .schema import Recipe


@dataclass
class OpenRun:
    recipe: Recipe
    data: DataSource
    model: torch.nn.Module
    checkpoint: Path


def find_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such run directory; give the out_dir of a run (or one of its step-XXXXXXXX/)")
    found = ckpt.latest(p)
    if found is None:
        raise CheckpointError(f"{p}: holds no checkpoint (step-XXXXXXXX/); train first with parallax run RECIPE out_dir={p}")
    return found


def open_run(path: str | Path, overrides: list[str] | None = None, device: str = "cpu") -> OpenRun:
    """``overrides`` (``key=value``) change the saved recipe, e.g. ``data.files=[...]`` to evaluate on other text."""
    found = find_checkpoint(path)
    registry = get_registry()
    ckpt.check_plugins(found, registry)
    recipe = load_recipe(str(found / "config.yaml"), overrides or [], registry)
    cls = registry.get("data_sources", recipe.data.type, where="data.type")
    data = cls(recipe.data, recipe.seed, recipe.train.batch_size)
    data.restore(found)
    model = build_model(recipe.model, data.info, registry)
    ckpt.load_model_state(found, model)
    return OpenRun(recipe=recipe, data=data, model=model.to(device).eval(), checkpoint=found)
