"""Opening recipes and trained runs, as the commands and benchmarks do.

``load`` reads a recipe with ``key=value`` overrides and, when it names a plugin that is not
installed, lets a checkpoint's metadata name the package to install. ``open_run`` turns a run
directory (``out_dir``) or one of its ``step-XXXXXXXX/`` checkpoints into the recipe the run was
trained with (the checkpoint's ``config.yaml``), its data source with the files it saved restored
(the tokenizer), and the model with the checkpoint's weights, in eval mode; an exported folder
(``parallax export``) opens the same way, from its config.json. ``open_text_run`` is
``open_run`` for commands that need a tokenizer (``generate``, ``bench generate``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .compiling import compile_for_inference, wanted
from .errors import CheckpointError, ConfigError, PluginError
from .model import build_model
from .protocols import DataSource, Tokenizer
from .recipe import load_recipe
from .registry import get_registry
from .schema import Recipe

CONFIG = "config.json"  # an export folder's recipe and provenance (parallax.export)


def load(recipe: str, overrides: list[str]) -> Recipe:
    """The recipe at ``recipe`` (a path or a built-in name) with ``overrides`` applied.

    When it names a component that no installed plugin provides and it comes with a checkpoint (it
    is a checkpoint's config.yaml, or train.resume=PATH names one), the checkpoint's metadata names
    the package to install, so the error says which."""
    try:
        return load_recipe(recipe, overrides)
    except PluginError:
        candidates = [Path(recipe).parent]
        candidates += [Path(o.split("=", 1)[1]) for o in overrides if o.startswith("train.resume=")]
        for path in candidates:
            if (path / "model.safetensors").is_file():
                ckpt.check_plugins(path, get_registry())
        raise


@dataclass
class OpenRun:
    recipe: Recipe
    data: DataSource
    model: torch.nn.Module
    checkpoint: Path

    @property
    def tokenizer(self) -> Tokenizer | None:
        """A text run's tokenizer (None for other data)."""
        return self.data.tokenizer


def find_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such run directory; give the out_dir of a run (or one of its step-XXXXXXXX/)")
    found = ckpt.latest(p)
    if found is None:
        raise CheckpointError(f"{p}: holds no checkpoint (step-XXXXXXXX/); "
                              f"train first with parallax run RECIPE out_dir={p}")
    return found


def open_run(path: str | Path, overrides: list[str] | None = None, device: str = "cpu") -> OpenRun:
    """``overrides`` (``key=value``) change the saved recipe, e.g. ``data.files=[...]`` to evaluate on other text."""
    found = find_checkpoint(path)
    registry = get_registry()
    ckpt.check_plugins(found, registry)
    recipe = _saved_recipe(found, overrides or [], registry)
    cls = registry.get("data_sources", recipe.data.type, where="data.type")
    data = cls(recipe.data, recipe.seed, recipe.train.batch_size)
    data.restore(found)
    model = build_model(recipe.model, data.info, registry)
    ckpt.load_model_state(found, model)
    if recipe.train.ema:  # the weights the run evaluated with
        from .ema import load_ema

        load_ema(found, model)
    model = model.to(device).eval()
    if wanted(recipe.train.compile, model, torch.device(device)):  # train.compile=true (auto: never here)
        compile_for_inference(model)
    return OpenRun(recipe=recipe, data=data, model=model, checkpoint=found)


def _saved_recipe(found: Path, overrides: list[str], registry) -> Recipe:
    """The recipe a checkpoint (its config.yaml) or an export folder (its config.json) was trained with."""
    from .recipe import apply_overrides, validate

    if is_export(found):
        return validate(apply_overrides(saved_recipe(found), overrides), registry)
    if not (found / "config.yaml").is_file():
        beside = found.parent / "config.yaml"
        fix = (f"copy the run's {beside} into it" if beside.is_file() else "use another step-* folder of the run")
        raise CheckpointError(f"{found}: no config.yaml, the recipe these weights were trained with; the checkpoint "
                              f"is incomplete; {fix}")
    return load_recipe(str(found / "config.yaml"), overrides, registry)


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``parallax export`` (a config.json beside the weights)."""
    p = Path(path)
    return (p / CONFIG).is_file() and (p / "model.safetensors").is_file() and not (p / "config.yaml").is_file()


def saved_recipe(path: Path) -> dict:
    """The recipe an export folder holds (its config.json's ``recipe``)."""
    try:
        config = json.loads((Path(path) / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/{CONFIG}: not readable JSON ({e}); export the run again") from None
    if not isinstance(config, dict) or not isinstance(config.get("recipe"), dict):
        raise CheckpointError(f"{path}/{CONFIG}: holds no recipe; not a parallax export (export the run again)")
    return config["recipe"]


def open_text_run(path: str | Path, threads: int = 1, device: str = "cpu",
                  compile: bool = False) -> tuple[OpenRun, Tokenizer]:
    """``open_run`` for a run of text, with torch limited to ``threads`` CPU threads (compiled: ``compile``)."""
    if threads < 1:
        raise ConfigError("--threads: must be at least 1")
    torch.set_num_threads(threads)
    run = open_run(path, [f"train.compile={'true' if compile else 'false'}"], device=device)
    tok = run.data.tokenizer
    if tok is None:
        raise ConfigError(f"{path}: its '{run.recipe.data.type}' data source has no tokenizer; generation needs a "
                          f"text run (e.g. recipes/tinystories.yaml)")
    return run, tok
