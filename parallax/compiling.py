"""``train.compile``: what ``false``, ``true`` and ``auto`` mean, and how a model is compiled.

A model that defines ``compile_in_place()`` (the CWS: its K steps, ``kloop._frozen``)
compiles the parts that pay and keeps its module tree and state dict; any other model is wrapped
whole by ``torch.compile``. ``auto`` compiles where it was measured to pay (docs/benchmarks.md,
"Compiled K loop"): a model with a K loop, training on the CPU (where inductor needs a C++
compiler) for at least ``AUTO_MIN_STEPS`` steps, since the first compilation costs seconds to a
minute. It is off on CUDA, which has not been measured, for models without a K loop, and for
evaluation and generation (``true`` turns them on).
"""
from __future__ import annotations

import os
import shutil
from typing import Literal

import torch
from torch import nn

#: ``auto`` compiles a training run of at least this many steps: the first compile of the K steps took
#: 15-46 s on the measuring CPU, and the compiled K loop saved about 0.025-0.06 s a step at recall's size
#: (0.058 s over recall.yaml's whole recipe: 581 s against 772 s for 3,300 steps)
AUTO_MIN_STEPS = 500

Setting = Literal["auto"] | bool


def wanted(setting: Setting, model: nn.Module, device: torch.device, steps: int | None = None) -> bool:
    """Whether to compile ``model`` on ``device`` for a run of ``steps`` training steps (None: not training)."""
    if setting != "auto":
        return bool(setting)
    return (getattr(model, "has_k_loop", False) and hasattr(model, "compile_in_place") and device.type == "cpu"
            and steps is not None and steps >= AUTO_MIN_STEPS and has_cpp_compiler())


def has_cpp_compiler() -> bool:
    """Inductor compiles CPU kernels with the C++ compiler named by ``CXX`` (default ``g++``)."""
    return shutil.which(os.environ.get("CXX", "g++")) is not None


def compile_model(model: nn.Module, net: nn.Module | None = None) -> nn.Module:
    """The module to call for compiled ``model``: ``net`` (the model, or its DDP or FSDP wrapper) with the
    model compiled in place where it knows how, else ``torch.compile(net)``. Weights, saving and
    loading always go through ``model``."""
    net = model if net is None else net
    if hasattr(model, "compile_in_place"):
        model.compile_in_place()
        return net
    return torch.compile(net)


def compile_for_inference(model: nn.Module) -> None:
    """Compile ``model`` in place for evaluation or generation (``nn.Module.compile`` where it has no
    ``compile_in_place``), so that callers keep the model itself."""
    if hasattr(model, "compile_in_place"):
        model.compile_in_place()
    else:
        model.compile()


def graphs_compiled() -> int:
    """Graphs torch.compile has compiled in this process so far: a step during which it grew was
    compiling, and its time is compile time, not training time."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
