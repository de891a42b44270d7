"""``any_rank`` and ``all_finite`` build their collective's tensor on the process group's device.

Under NCCL a CPU tensor in ``all_reduce`` fails ("No backend type associated with device type
cpu"). A machine without a GPU cannot run NCCL, so the NCCL case is faked: ``get_backend`` says
"nccl", the current CUDA device is 1, tensors are FakeTensors (which may sit on a CUDA device with
no GPU), and ``all_reduce`` is a spy that checks the tensor's device against what the backend
serves, then stops the call (a FakeTensor has no value to read). The gloo case runs for real in a
one-process group.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode

from parallax.distributed import all_finite, any_rank, collective_device, mean_over_ranks, sum_over_ranks

SERVES = {"nccl": "cuda", "gloo": "cpu"}  # the device type each backend's collectives accept


class Reduced(Exception):
    """Raised by the spy once it has checked the tensor: a FakeTensor's value cannot be read."""


@pytest.fixture
def fake_nccl(monkeypatch):
    """A process group that claims NCCL on CUDA device 1; all_reduce checks its tensor's device."""
    seen = []

    def all_reduce(tensor, op=None, group=None):
        backend = dist.get_backend(group)
        assert tensor.device.type == SERVES[backend], f"{backend} all-reduces a {tensor.device} tensor"
        seen.append(tensor.device)
        raise Reduced

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    with FakeTensorMode(allow_non_fake_inputs=True):
        yield seen


def test_collective_device_follows_the_backend(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    for backend, want in [("nccl", torch.device("cuda", 1)), ("gloo", torch.device("cpu")),
                          ("cpu:gloo,cuda:nccl", torch.device("cpu"))]:
        monkeypatch.setattr(dist, "get_backend", lambda group=None, b=backend: b)
        assert collective_device() == want, backend
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "mystery")
    with pytest.raises(ValueError, match="mystery"):
        collective_device()


def test_any_rank_reduces_on_the_cuda_device_under_nccl(fake_nccl):
    with pytest.raises(Reduced):
        any_rank(True)
    assert fake_nccl == [torch.device("cuda", 1)]


@pytest.mark.parametrize("where", ["cpu", "cuda:1"])
def test_all_finite_reduces_on_the_cuda_device_under_nccl(fake_nccl, where):
    """Wherever the loss was computed, its verdict is reduced on the current CUDA device."""
    with pytest.raises(Reduced):
        all_finite(torch.tensor(1.5, device=where))
    assert fake_nccl == [torch.device("cuda", 1)]


@pytest.mark.parametrize("helper", [lambda: mean_over_ranks(2.5), lambda: sum_over_ranks([1.0, 2.0])])
def test_the_averages_reduce_on_the_cuda_device_under_nccl(fake_nccl, helper):
    """The logged loss's mean and a sharded evaluation's sums go the same way as the flags."""
    with pytest.raises(Reduced):
        helper()
    assert fake_nccl == [torch.device("cuda", 1)]


def test_the_spy_catches_a_cpu_tensor_under_nccl(fake_nccl):
    """What the old helpers did (a CPU tensor whatever the backend) fails here."""
    with pytest.raises(AssertionError, match="nccl all-reduces a cpu tensor"):
        dist.all_reduce(torch.tensor(1.0), op=dist.ReduceOp.MAX)


def test_single_process_answers_locally():
    assert not dist.is_initialized()
    assert any_rank(True) and not any_rank(False)
    assert all_finite(torch.tensor([1.0, 2.0])) and not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor(float("inf")))
    assert mean_over_ranks(2.5) == 2.5 and sum_over_ranks([1.0, 2.0]) == [1.0, 2.0]


def test_gloo_group_reduces_on_the_cpu(tmp_path, monkeypatch):
    """A real one-process gloo group: the helpers all-reduce CPU tensors and give the right answers."""
    devices = []
    real_all_reduce = dist.all_reduce

    def spy(tensor, op=None, group=None):
        devices.append(tensor.device)
        return real_all_reduce(tensor, op=op, group=group)

    monkeypatch.setattr(dist, "all_reduce", spy)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert collective_device() == torch.device("cpu")
        assert any_rank(True) and not any_rank(False)
        assert all_finite(torch.tensor(0.5)) and not all_finite(torch.tensor(float("nan")))
        assert mean_over_ranks(2.5) == 2.5 and sum_over_ranks([1.0, 2.0]) == [1.0, 2.0]
    finally:
        dist.destroy_process_group()
    assert devices == [torch.device("cpu")] * 6
