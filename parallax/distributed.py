"""Agreement across ranks: small all-reduces whose tensors live on the process group's device.

A collective's tensors must be on a device its backend serves: NCCL serves CUDA tensors only (a
CPU tensor fails with "No backend type associated with device type cpu"), gloo serves CPU tensors.
So these helpers never build their tensor where the caller's data happens to be: they ask the
group's backend, and take the current CUDA device under NCCL and the CPU under gloo.

Outside a process group (a single process) each helper returns the local answer, without a
collective, so a training loop calls them unconditionally.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def collective_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """The device for the tensors of a collective over ``group`` (the default group when None).

    The CPU where the backend serves it (gloo, mpi, ucc: no copy to an accelerator for a flag), else
    the current device of the accelerator it serves (NCCL: ``torch.cuda.current_device()``, which the
    trainer sets to the rank's GPU). A backend given per device ("cpu:gloo,cuda:nccl") serves each.
    """
    backend = str(dist.get_backend(group))
    devices = dist.Backend.backend_capability.get(backend)
    if devices is None and ":" in backend:  # "cpu:gloo,cuda:nccl"
        devices = [entry.split(":", 1)[0] for entry in backend.split(",")]
    if not devices:
        raise ValueError(f"process group backend {backend!r}: no known device for its collectives; "
                         f"register it with torch.distributed.Backend.register_backend(..., devices=[...])")
    if "cpu" in devices:
        return torch.device("cpu")
    kind = devices[0]
    return torch.device(kind, torch.get_device_module(kind).current_device())


def any_rank(flag: bool, device: torch.device | None = None, group: dist.ProcessGroup | None = None) -> bool:
    """True on every rank when ``flag`` is True on at least one (a max all-reduce of one float).

    ``device`` defaults to ``collective_device(group)``; pass one only to override that choice.
    """
    if not _initialized():
        return bool(flag)
    t = torch.tensor(float(flag), device=device or collective_device(group))  # ()
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def all_finite(loss: torch.Tensor, device: torch.device | None = None, group: dist.ProcessGroup | None = None) -> bool:
    """True on every rank when ``loss`` (any shape) is finite on all of them (a min all-reduce).

    The local test runs where ``loss`` is; only its one-float verdict moves to the group's device.
    """
    ok = torch.isfinite(loss.detach()).all().float()  # ()
    if not _initialized():
        return bool(ok.item())
    ok = ok.to(device or collective_device(group))
    dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=group)
    return bool(ok.item())


def mean_over_ranks(value: float, group: dist.ProcessGroup | None = None) -> float:
    """The mean of a float over the ranks (an average all-reduce); ``value`` itself in one process."""
    if not _initialized():
        return value
    return sum_over_ranks([value], group)[0] / dist.get_world_size(group)


def sum_over_ranks(values: list[float], group: dist.ProcessGroup | None = None) -> list[float]:
    """Element-wise sums of a list of floats over the ranks (one all-reduce); the list itself in one process."""
    if not _initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=collective_device(group))  # (n,)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t.tolist()
