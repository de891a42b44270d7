"""``parallax bench ablation RUN_DIR``: how much validation loss depends on what a component stores.

Any module of a model may offer ``ablate(fraction, seed)``, a context manager inside which a random
``fraction`` of its stored entries is left out (a memory bank drops bank entries). For the newest
checkpoint of a run, this evaluates the validation set once as trained, then once per module,
fraction and seed under ablation, and reports each change in validation loss. Seed 003's test of
a collapsed bank: "Removing any subset of the embeddings had negligible effect".

The JSON also carries the evaluation with every component's ``diagnostics()`` (parallax/diagnostics.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.table import Table

from .. import checkpoint as ckpt
from ..build import build_data, resolve_device
from ..diagnostics import collect
from ..errors import ConfigError
from ..evaluate import evaluate
from ..model import build_model
from ..recipe import load_recipe
from ..registry import get_registry
from ..runs import find_checkpoint


def load_run(run_dir: str | Path):
    """(recipe, model in eval mode, data source, checkpoint path) of the newest checkpoint in ``run_dir``,
    or of ``run_dir`` itself when it is one step-XXXXXXXX/ folder."""
    found = find_checkpoint(run_dir)
    registry = get_registry()
    ckpt.check_plugins(found, registry)
    recipe = load_recipe(str(found / "config.yaml"), [], registry)
    data = build_data(recipe, registry)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, data.info, registry)
    ckpt.load_model_state(found, model)
    return recipe, model.eval(), data, found


def measure(run_dir: str | Path, fractions: list[float], seeds: list[int]) -> dict:
    recipe, model, data, found = load_run(run_dir)
    device = resolve_device(recipe.train)
    model.to(device)
    base = {**evaluate(model, data, device), **collect(model)}
    targets = [(name, m) for name, m in model.named_modules() if callable(getattr(m, "ablate", None))]
    if not targets:
        raise ConfigError(f"{run_dir}: no component of this model supports ablation (none defines ablate())")
    rows = []
    for name, module in targets:
        for fraction in fractions:
            for seed in seeds:
                with module.ablate(fraction, seed) as dropped:
                    res = evaluate(model, data, device)
                row = {"module": name, "fraction": fraction, "seed": seed, "dropped": dropped, **res,
                       "delta_val_loss": res["val_loss"] - base["val_loss"]}
                rows.append(row)
    return {"run_dir": str(run_dir), "checkpoint": str(found), "base": base, "rows": rows}


def run(args, out, err) -> int:
    bad = [f for f in args.fractions if not 0 <= f < 1]
    if bad:
        raise ConfigError(f"--fractions: each fraction must be in [0, 1); got {bad[0]}")
    result = measure(args.run_dir, args.fractions, args.seeds)
    if args.json:
        out.out(json.dumps(result, indent=2), highlight=False)
        return 0
    base = result["base"]
    table = Table("module", "fraction", "seed", "dropped", "val_loss", "Δ val_loss",
                  title=f"ablation of {result['checkpoint']} (val_loss as trained {base['val_loss']:.4f})")
    for r in result["rows"]:
        table.add_row(r["module"], f"{r['fraction']:.2f}", str(r["seed"]), str(r["dropped"]),
                      f"{r['val_loss']:.4f}", f"{r['delta_val_loss']:+.4f}")
    out.print(table)
    diag = {k: v for k, v in base.items() if not k.startswith("val_")}
    if diag:
        out.print("diagnostics: " + "  ".join(f"{k} {v:.4g}" if v is not None else f"{k} n/a" for k, v in diag.items()))
    return 0
