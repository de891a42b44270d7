"""The fused Triton workspace step against the pure-PyTorch reference: forward and backward parity.

On a machine without CUDA these run under TRITON_INTERPRET=1 (set by tests/conftest.py), so the
shapes are small. Covered: odd S, dh that is not a power of two, several T, halted positions, bf16.
"""
from __future__ import annotations

import pytest
import torch

from parallax_kernels.workspace import workspace_step_ref
from parallax_kernels.workspace.fused import workspace_step_fused

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(2, 3, 2, 5, 8), (1, 7, 3, 3, 16), (2, 5, 1, 9, 12), (3, 1, 4, 1, 4)]  # (B,T,H,S,dh)


def inputs(B, T, H, S, dh, dtype, masked):
    g = torch.Generator().manual_seed(B * 1000 + T * 100 + S)
    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype).requires_grad_()
    q, k, v = r(B, T, H, dh), r(B, T, S, H, dh), r(B, T, S, H, dh)
    cum = r(B, T, H, S, scale=2.0)
    decay = torch.rand(H, generator=g).clamp(0.05, 0.95).to(DEVICE).requires_grad_()
    active = (torch.rand(B, T, generator=g) > 0.4).to(DEVICE) if masked else None
    return q, k, v, cum, decay, active


def run(fn, args, base):
    q, k, v, cum, decay, active = args
    out, cum_new, raw = fn(q, k, v, cum, decay, base, active)
    g = torch.Generator().manual_seed(7)
    go = torch.randn(out.shape, generator=g).to(out)
    gc = torch.randn(cum_new.shape, generator=g).to(cum_new)
    grads = torch.autograd.grad((out * go).sum() + (cum_new * gc).sum(), (q, k, v, cum, decay))
    return (out, cum_new, raw), grads


def assert_close(a, b, rtol):
    scale = b.detach().float().abs().max().clamp_min(1e-6)
    err = (a.detach().float() - b.detach().float()).abs().max() / scale
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("masked", [False, True], ids=["all-active", "halted"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_fused_matches_reference_float32(shape, masked):
    args = inputs(*shape, torch.float32, masked)
    (fo, fc, fr), fg = run(workspace_step_fused, args, 2.0)
    (ro, rc, rr), rg = run(workspace_step_ref, args, 2.0)
    for a, b in [(fo, ro), (fc, rc), (fr, rr), *zip(fg, rg)]:
        assert_close(a, b, 1e-4)


@pytest.mark.parametrize("shape", SHAPES[:2], ids=[str(s) for s in SHAPES[:2]])
def test_fused_matches_reference_bf16(shape):
    args = inputs(*shape, torch.bfloat16, masked=True)
    (fo, fc, _), fg = run(workspace_step_fused, args, 3.0)
    (ro, rc, _), rg = run(workspace_step_ref,
                          [a.float().detach().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a
                           for a in args], 3.0)
    for a, b in [(fo, ro), (fc, rc), *zip(fg[:4], rg[:4])]:
        assert_close(a, b, 2e-2)


def test_halted_positions_pass_cum_through():
    q, k, v, cum, decay, _ = inputs(1, 4, 2, 3, 8, torch.float32, False)
    active = torch.tensor([[True, False, True, False]], device=DEVICE)
    out, cum_new, raw = workspace_step_fused(q, k, v, cum, decay, 2.0, active)
    assert torch.equal(cum_new[0, 1], cum[0, 1].detach()) and torch.equal(cum_new[0, 3], cum[0, 3].detach())
    assert out[0, 1].abs().sum() == 0 and raw[0, 3].abs().sum() == 0
    assert not torch.equal(cum_new[0, 0], cum[0, 0].detach())
