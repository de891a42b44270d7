"""Diagnostics that components report about themselves, collected into metrics.jsonl and evaluations.

Any module of a model may define ``diagnostics() -> dict[str, float]`` (a memory bank reports how
collapsed it is, for instance). ``collect`` calls every such method and prefixes each key with the
module's path in the model, so two experts of one type stay apart: ``experts.1.bank_cosine``.
The trainer logs them with each training record and each evaluation; the core names no plugin.
"""
from __future__ import annotations

import math

import torch


def collect(model: torch.nn.Module) -> dict[str, float]:
    """``{"<module path>.<key>": value}`` over every submodule that defines ``diagnostics()``."""
    out: dict[str, float] = {}
    for name, module in model.named_modules():
        report = getattr(module, "diagnostics", None)
        if not callable(report):
            continue
        for key, value in report().items():
            value = float(value)
            out[f"{name}.{key}" if name else key] = value if math.isfinite(value) else None
    return out
