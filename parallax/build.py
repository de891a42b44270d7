"""What a run is built on: its data source, its device and autocast precision, and its seeded RNGs.

Everything here reads a validated ``Recipe`` (or its ``train`` block); the trainer, evaluation and the
benchmarks build their runs through these functions so that they agree on every choice.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from .errors import ConfigError
from .protocols import DataSource
from .registry import Registry, get_registry
from .schema import Recipe, TrainConfig


def build_data(recipe: Recipe, registry: Registry | None = None) -> DataSource:
    """The recipe's data source, seeded by ``recipe.seed`` and batched by ``train.batch_size``."""
    cls = (registry or get_registry()).get("data_sources", recipe.data.type, where="data.type")
    return cls(recipe.data, recipe.seed, recipe.train.batch_size)


def resolve_device(cfg: TrainConfig) -> torch.device:
    """``train.device``: auto is CUDA when one is available, else the CPU."""
    return named_device(cfg.device, "train.device", fix="train.device=cpu")


def named_device(name: str, where: str = "--device", fix: str | None = None) -> torch.device:
    """A device by name (cpu, cuda or auto: CUDA when one is available), with a one-line error naming
    ``where`` it was asked for, and ``fix`` (default ``WHERE cpu``), when CUDA is missing."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{where}: cuda was asked for but no CUDA device is available; use {fix or where + ' cpu'}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """``train.precision`` as an autocast dtype; None runs in float32."""
    if cfg.precision == "fp32":
        return None
    if cfg.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float16


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators, so that every rank builds the same initial weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tokens_per_example(data: DataSource) -> int:
    """Input positions in one training example (tokens of a sequence, patches count as their pixels)."""
    return int(data.batch(0)["inputs"][0].numel())
