"""Data-parallel training: the model wrapped for DDP or FSDP2, and its full state for checkpoints.

``train.distributed: ddp`` keeps a whole replica of the weights on every rank and all-reduces the
gradients (``torch.nn.parallel.DistributedDataParallel``). ``fsdp`` shards the weights, gradients
and optimizer state across the ranks (FSDP2, ``torch.distributed.fsdp.fully_shard``): each rank holds
1/world of every tensor, gathers the weights for its forward and backward, and reduce-scatters the
gradients.

The whole model is one FSDP unit. A CWS forward calls its parts through methods other than
``forward`` (an expert's context, the workspace's step inside the K loop), and FSDP gathers a
unit's weights only around its ``forward``; so the parts are not sharded as units of their own.

A checkpoint holds the full, unsharded state in the single-process format (the optimizer state
keyed by parameter index), written by rank 0 after every rank has taken part in gathering it. So
it loads into a single process, or into any number of ranks: each rank reads the full state and
keeps its own shard.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Mode = Literal["ddp", "fsdp"]


def wrap(model: nn.Module, mode: Mode) -> nn.Module:
    """The module the training loop calls. DDP returns a wrapper; FSDP shards ``model`` in place
    (its parameters become DTensors) and returns it, so build the optimizer after this."""
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
        return model
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of an FSDP model, on rank 0's CPU; empty on the other ranks (a
    collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def _param_index(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Parameter name -> its index in ``optimizer.state_dict()`` (the order of the groups' params)."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {name: i for i, name in enumerate(order)}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The unsharded optimizer state of an FSDP model in ``optimizer.state_dict()``'s own format
    (keyed by parameter index), as a single process saves it; on rank 0, empty on the others (a
    collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer, options=_options())
    if not by_name:  # offloaded to the CPU, the full state lands on rank 0 alone
        return {}
    index = _param_index(model, optimizer)
    return {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in by_name["param_groups"]],
    }


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a single-process optimizer state (``full_optimizer_state``'s format) into an FSDP model's
    optimizer: every rank reads the whole state and keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    name = {i: n for n, i in _param_index(model, optimizer).items()}
    by_name = {
        "state": {name[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [name[int(i)] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def local_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor result (FSDP's gradient norm), or ``t`` itself."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t
