"""Tiny recipes for tests, and a helper that trains one for a few steps.

The tiny recipe is a CWS on synthetic BIND/RECALL with d_model 16 and K at most 4: every built-in
component, small enough that a training step takes a fraction of a second on one CPU core.
Swap in your own component by name to see it train beside the built-ins.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

TINY: dict[str, Any] = {
    "seed": 0,
    "out_dir": "runs/tiny",
    "model": {
        "type": "cws",
        "d_model": 16,
        "k_max": 4,
        "live_steps": 1,
        "halting": {"type": "momentum", "rel_tol": 0.05, "abs_tol": 0.001, "k_min": 2},
        "encoder": {"type": "token", "window": 2},
        "experts": [
            {"type": "mamba_siso", "slots": 2, "d_state": 4},
            {"type": "attention_probe", "slots": 1, "heads": 2},
            {"type": "mlp_probe", "slots": 1, "hidden": 16},
            {"type": "siren", "slots": 1, "hidden": 8},
        ],
        "workspace": {"type": "cws", "heads": 2},
        "decoder": {"type": "motor", "layers": 2, "context": 4, "heads": 2, "mlp_ratio": 2},
    },
    "data": {"type": "recall", "n_keys": 8, "n_values": 8, "n_pairs": 3, "n_queries": 2, "val_size": 16},
    "train": {
        "max_steps": 6,
        "batch_size": 4,
        "eval_every": 3,
        "log_every": 1,
        "save_every": 3,
        "threads": 1,
        "progress": False,
        "optimizer": {"type": "adamw", "lr": 0.003},
        "schedule": {"warmup_steps": 2},
    },
}


def tiny_recipe_data(
    out_dir: str | Path = "runs/tiny",
    *,
    experts: list[dict] | None = None,
    encoder: dict | None = None,
    workspace: dict | None = None,
    decoder: dict | None = None,
) -> dict:
    """The tiny recipe as a dict, with any of its components replaced (``experts`` replaces the list)."""
    data = copy.deepcopy(TINY)
    data["out_dir"] = str(out_dir)
    model = data["model"]
    for key, value in (("experts", experts), ("encoder", encoder), ("workspace", workspace), ("decoder", decoder)):
        if value is not None:
            model[key] = copy.deepcopy(value)
    return data


def write_tiny_recipe(path: str | Path, out_dir: str | Path, **components: Any) -> Path:
    """Write the tiny recipe (see ``tiny_recipe_data``) to ``path`` and return the path."""
    path = Path(path)
    text = yaml.safe_dump(tiny_recipe_data(out_dir, **components), sort_keys=False)
    path.write_text(f"# parallax run {path.name}\n{text}")
    return path


def train(recipe: str | Path, out_dir: str | Path, *overrides: str, steps: int = 5) -> dict:
    """Train ``recipe`` (a YAML path or a built-in recipe's name) for ``steps`` optimizer steps.

    Runs exactly what ``parallax run RECIPE out_dir=OUT_DIR train.max_steps=STEPS ...`` runs, with
    ``overrides`` applied last; returns the run's summary (``step``, ``val_loss``...).
    """
    from ..recipe import load_recipe
    from ..trainer import Trainer

    sets = [f"out_dir={out_dir}", f"train.max_steps={steps}", "train.max_minutes=null", "train.progress=false"]
    return Trainer(load_recipe(str(recipe), [*sets, *overrides]), console=Console(stderr=True)).fit()
