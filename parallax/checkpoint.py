"""Checkpoints: ``out_dir/step-XXXXXXXX/{model.safetensors, config.yaml, trainer_state.pt}``, plus the
data source's files (a text run's ``tokenizer.json``).

A checkpoint is written into a temporary sibling folder and renamed into place, so a crash never
leaves a half-written ``step-*`` behind. The safetensors metadata records the registry names the
model uses and the plugins (with versions) that provide them, so a checkpoint whose plugin is
missing can name the package to install.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .registry import Registry

STEP_RE = re.compile(r"^step-(\d{8})$")
FORMAT = "parallax-cws/1"


def step_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"step-{step:08d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``out_dir``, oldest first."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name) and (p / "model.safetensors").is_file()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def latest(out_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def newest_inside(path: str | Path) -> Path | None:
    """The newest checkpoint of ``path`` when ``path`` is a run directory rather than a checkpoint."""
    p = Path(path)
    if (p / "model.safetensors").exists() or not p.is_dir():
        return None
    return latest(p)


def components_used(components: list[tuple[str, str]], registry: Registry) -> dict[str, str]:
    """``{"experts/mamba_siso": "dist==version", ...}`` for the recipe's (kind, name) components."""
    used = {}
    for kind, name in components:
        p = registry.entry(kind, name).plugin
        used[f"{kind}/{name}"] = f"{p.dist or p.name}=={p.version or '?'}"
    return used


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as safetensors stores it: detached, contiguous, on the CPU.

    Tensors that share memory stay shared, so safetensors refuses a module that registers one
    tensor under two names (a tied weight belongs to one module only).
    """
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    trainer_state: dict,
    config_yaml: str,
    metadata: dict[str, str],
    keep_last_n: int | None = None,
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write a checkpoint; ``files`` are the data source's own (a tokenizer), copied in beside the weights."""
    final = step_dir(out_dir, step)
    tmp = Path(out_dir) / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state_tensors(model), str(tmp / "model.safetensors"), metadata={"format": FORMAT, **metadata})
    (tmp / "config.yaml").write_text(config_yaml)
    torch.save(trainer_state, tmp / "trainer_state.pt")
    for name, content in (files or {}).items():
        (tmp / name).write_bytes(content)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last_n:
        for old in list_checkpoints(out_dir)[:-keep_last_n]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    f = Path(path) / "model.safetensors"
    try:
        with safe_open(str(f), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{f}: not a readable safetensors file ({e}); use an earlier step-* folder (train.resume=PATH to train on from it)") from None


def check_plugins(path: str | Path, registry: Registry) -> None:
    """Raise a one-line error naming the package to install when a component is not registered."""
    meta = read_metadata(path)
    used = json.loads(meta.get("components", "{}"))
    for key, provider in used.items():
        kind, name = key.split("/", 1)
        if kind in registry.entries and name not in registry.entries[kind]:
            skipped = registry.skipped.get(provider.split("==")[0])
            if skipped:
                raise CheckpointError(f"{path}: needs {kind[:-1].replace('_', ' ')} '{name}' from {provider}, which is "
                                      f"installed but {skipped}; change that variable")
            raise CheckpointError(
                f"{path}: needs {kind[:-1].replace('_', ' ')} '{name}' from {provider}, which is not installed; "
                f"pip install {provider.split('==')[0]}"
            )


def load_model_state(path: str | Path, model: torch.nn.Module) -> None:
    f = Path(path) / "model.safetensors"
    if not f.is_file():
        newest = newest_inside(path)
        if newest is not None:  # a run's out_dir, not one of its checkpoints
            raise CheckpointError(f"{path}: is a run directory, not a checkpoint; name one of its step folders, "
                                  f"such as {newest}")
        raise CheckpointError(f"{path}: no model.safetensors; not a checkpoint directory (expected step-XXXXXXXX/)")
    try:
        state = load_file(str(f))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{f}: corrupt or unreadable ({str(e).splitlines()[0]}); use an earlier step-* folder (train.resume=PATH to train on from it)") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{f}: does not match the recipe's model ({_first_mismatch(str(e))}); "
                              f"use the recipe it was trained with") from None


def _first_mismatch(message: str) -> str:
    """The first informative line of load_state_dict's error: a size mismatch, or the missing/unexpected keys."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    detail = next((ln for ln in lines[1:] if ln.startswith(("size mismatch", "Missing key", "Unexpected key"))), None)
    if detail is None:
        return lines[0] if lines else "unknown difference"
    return detail if len(detail) <= 300 else detail[:297] + "..."


def load_trainer_state(path: str | Path) -> dict:
    f = Path(path) / "trainer_state.pt"
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no trainer_state.pt; the checkpoint is incomplete") from None
    except Exception as e:  # torch raises several types for truncated pickles
        raise CheckpointError(f"{f}: corrupt ({type(e).__name__}); use an earlier step-* folder (train.resume=PATH to train on from it)") from None
