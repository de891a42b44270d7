"""Resuming a run: which checkpoint ``train.resume`` names, and restoring the trainer's state from it.

``resolve_resume`` turns ``train.resume`` (false | auto | true | PATH) into a checkpoint folder or
None. ``restore_state`` loads the optimizer, scheduler, grad-scaler and RNG states saved beside the
weights and reconciles them with the recipe: the recipe's optimizer options and schedule apply, not
the checkpoint's, and a checkpoint of another optimizer type starts its optimizer state fresh.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .errors import ConfigError
from .schema import OptimizerConfig, TrainConfig


def resolve_resume(cfg: TrainConfig, out_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to start over existing checkpoints."""
    r = cfg.resume
    if r is False or r == "false":
        if ckpt.list_checkpoints(out_dir):
            raise ConfigError(
                f"train.resume: {out_dir} already holds checkpoints; pass train.resume=auto to continue, "
                f"or choose a new out_dir=..."
            )
        return None
    if r == "auto":
        return ckpt.latest(out_dir)
    if r is True or r == "true":
        found = ckpt.latest(out_dir)
        if found is None:
            raise ConfigError(f"train.resume: true, but {out_dir} holds no checkpoint; use train.resume=auto")
        return found
    path = Path(str(r))
    if not path.is_dir():
        raise ConfigError(f"train.resume: checkpoint directory {path} does not exist")
    newest = ckpt.newest_inside(path)
    if newest is not None:
        raise ConfigError(f"train.resume: {path} is a run directory, not a checkpoint; name one of its step "
                          f"folders ({newest}), or set out_dir={path} train.resume=auto")
    return path


def trainer_state(step: int, opt_cfg: OptimizerConfig, optimizer, scheduler, scaler,
                  optimizer_state: dict | None = None) -> dict:
    """What a checkpoint keeps beside the weights to continue the run exactly. ``optimizer_state``
    replaces ``optimizer.state_dict()`` where that is not the full state (FSDP's shards)."""
    return {
        "step": step,
        "optimizer_type": opt_cfg.type,
        "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
    }


def restore_state(path: Path, opt_cfg: OptimizerConfig, optimizer, scheduler, scaler,
                  load_optimizer=None) -> tuple[int, list[str]]:
    """Load the trainer state of checkpoint ``path`` into the given objects; returns (step, notes to print).

    ``load_optimizer(state)`` replaces ``optimizer.load_state_dict`` (FSDP keeps a shard of the full state)."""
    state = ckpt.load_trainer_state(path)
    # the recipe's optimizer options, taken before the saved state replaces the groups
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    saved_type = state.get("optimizer_type")
    if saved_type is not None:
        same_type = saved_type.lower() == opt_cfg.type.lower()
    else:  # written before the type was saved: another type has other option names (a newer torch adds some)
        same_type = compatible_groups(group_keys(state.get("optimizer")), group_keys(optimizer.state_dict()))
    try:
        if same_type:
            (load_optimizer or optimizer.load_state_dict)(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"train.resume: {path} does not match this recipe's optimizer ({e}); "
                          f"resume with its own recipe") from None
    notes = apply_recipe_options(opt_cfg, optimizer, scheduler, fresh)
    if not same_type:
        notes.insert(0, f"the checkpoint's optimizer is {saved_type or 'another type'}, the recipe's "
                        f"{opt_cfg.type}: its state starts fresh")
    return step, notes


def apply_recipe_options(opt_cfg: OptimizerConfig, optimizer, scheduler, fresh: list[dict]) -> list[str]:
    """After a resume, the recipe's optimizer options and schedule apply, not the checkpoint's.

    Loading a state dict restores each group's options (lr, betas, weight decay...) and the
    scheduler's base learning rates as they were saved; a resume with train.optimizer.lr=...
    would otherwise keep the old ones. Returns one note per option that changed.
    """
    groups = optimizer.param_groups
    changed: dict[str, tuple] = {}  # option -> (the recipe's value, the checkpoint's), first group that differs
    for g, f in zip(groups, fresh):
        side = "adamw." if f.get("optimizer") == "adamw" and opt_cfg.type.lower() == "muon" else ""
        for k, v in f.items():
            name = side + ("lr" if k == "initial_lr" else k)
            if k != "lr" and k in g and not _same(g[k], v) and name not in changed:
                changed[name] = (v, g[k])
    for g, f in zip(groups, fresh):
        g.update(f)
    scheduler.base_lrs = [g["initial_lr"] for g in groups]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for g, base in zip(groups, scheduler.base_lrs):
        g["lr"] = base * factor
    scheduler._last_lr = [g["lr"] for g in groups]
    return [f"train.optimizer.{k}: the recipe's {new} replaces the checkpoint's {old}"
            for k, (new, old) in sorted(changed.items())]


def _same(a, b) -> bool:
    """Equal options; a tuple equals the list it becomes in a saved state (betas)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def group_keys(state: dict | None) -> list[set] | dict | None:
    """The option names of each param group of an optimizer state dict; Muon + AdamW: ``{half: ...}``."""
    if not isinstance(state, dict):
        return None
    if "param_groups" in state:
        return [set(g) - {"params"} for g in state["param_groups"]]
    return {half: group_keys(v) for half, v in state.items()}


def compatible_groups(saved, fresh) -> bool:
    """Whether each saved group's options are a subset or a superset of the fresh group's (a newer
    torch adds options; another optimizer type has other ones)."""
    if isinstance(saved, dict) or isinstance(fresh, dict):  # Muon + AdamW: each half alike
        return (isinstance(saved, dict) and isinstance(fresh, dict) and saved.keys() == fresh.keys()
                and all(compatible_groups(saved[h], fresh[h]) for h in saved))
    if saved is None or fresh is None:
        return saved is fresh
    return len(saved) == len(fresh) and all(a <= b or b <= a for a, b in zip(saved, fresh))
