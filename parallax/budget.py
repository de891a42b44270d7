"""Bounds before allocation: a model's training memory estimated from its recipe, refused before it is built.

The model is built on the meta device (shapes only, nothing allocated), its parameters counted, and
the memory one training step needs at least is estimated as

    parameters x 16 bytes (float32 weights, gradients and two AdamW moments)
    + batch_size x positions x d_model x 4 bytes x ACTIVATION_FACTOR x live_steps (the live step's activations)

which is a floor, not a forecast. A recipe whose floor exceeds ``train.max_memory_gb`` (by default
the memory of the device it trains on: the machine's RAM, or the GPU's) is refused in one line that
names the keys to change. Raise ``train.max_memory_gb`` to train anyway.
"""
from __future__ import annotations

import os

import torch

from .errors import ConfigError
from .protocols import DataInfo
from .schema import Recipe

BYTES_PER_PARAMETER = 16  # float32 weight + gradient + AdamW's two moments
ACTIVATION_FACTOR = 16  # floats kept per position and width in a live step (slots, heads, the decoder)
GB = 2**30


def device_memory(device: torch.device) -> int | None:
    """Total memory of ``device`` in bytes (CUDA: the GPU's; CPU: the machine's RAM), None when unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def meta_model(recipe: Recipe, info: DataInfo, registry=None) -> torch.nn.Module:
    """The recipe's model on the meta device; a size no tensor can have is one ConfigError."""
    from .model import build_model

    try:
        with torch.device("meta"):
            return build_model(recipe.model, info, registry)
    except (OverflowError, MemoryError) as e:
        raise ConfigError(f"model: a size in this recipe is too large to build ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'overflow'}); check model.d_model and the "
                          f"components' sizes") from None
    except RuntimeError as e:
        if "overflow" in str(e).lower() or "too large" in str(e).lower():
            raise ConfigError(f"model: a size in this recipe is too large to build ({str(e).splitlines()[0]}); "
                              f"check model.d_model and the components' sizes") from None
        raise


def estimate(recipe: Recipe, model: torch.nn.Module, positions: int) -> dict:
    """``{"parameters", "bytes"}``: the parameter count and the training-memory floor (see the module docstring)."""
    params = sum(p.numel() for p in model.parameters())
    width = getattr(recipe.model, "d_model", None) or getattr(recipe.model, "n_embd", None) or 0
    live = getattr(recipe.model, "live_steps", 1)
    activations = recipe.train.batch_size * positions * width * 4 * ACTIVATION_FACTOR * live
    return {"parameters": params, "bytes": params * BYTES_PER_PARAMETER + activations}


def check_fits(recipe: Recipe, model: torch.nn.Module, positions: int, device: torch.device) -> dict:
    """Raise one ConfigError when the recipe's training-memory floor exceeds the limit; returns the estimate."""
    est = estimate(recipe, model, positions)
    limit_gb = recipe.train.max_memory_gb
    if limit_gb is None:
        total = device_memory(device)
        if total is None:
            return est
        limit, source = total, f"the {device.type.upper() if device.type == 'cuda' else 'machine'}'s memory"
    else:
        limit, source = int(limit_gb * GB), "train.max_memory_gb"
    if est["bytes"] > limit:
        size = ("model.d_model" if hasattr(recipe.model, "d_model") else "model.n_embd") + ", the components' sizes"
        raise ConfigError(
            f"model: needs at least {est['bytes'] / GB:,.1f} GB to train ({est['parameters']:,} parameters, "
            f"train.batch_size {recipe.train.batch_size} x {positions} positions), more than {source} "
            f"({limit / GB:,.1f} GB); shrink {size} or train.batch_size, or raise train.max_memory_gb")
    return est
