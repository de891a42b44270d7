"""The fused step as the custom op ``parallax_kernels::workspace_step``: its registration
(``torch.library.opcheck``), its fake implementation, and ``torch.compile`` keeping it in one graph.
Eagerly ``workspace_step_fused`` runs an autograd.Function over the same kernels, so the compiled
against eager comparisons below set the op against that Function, and both against the reference.

On a machine without CUDA the kernels run under TRITON_INTERPRET=1 (set by tests/conftest.py), so
the shapes are small, and compile uses the ``eager`` and ``aot_eager`` backends, which need no C++
or GPU compiler: ``aot_eager`` runs the op's fake implementation and autograd formula through
AOTAutograd, as Inductor would, and then the real kernels.
"""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from parallax_kernels.workspace import workspace_step_ref
from parallax_kernels.workspace.fused import workspace_step_fused

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OP = torch.ops.parallax_kernels.workspace_step
BACKWARD_OP = torch.ops.parallax_kernels.workspace_step_backward
SHAPE = (2, 3, 2, 5, 8)  # (B,T,H,S,dh): odd S, several T


def inputs(B, T, H, S, dh, dtype=torch.float32, cum_dtype=None, masked=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dt).requires_grad_()

    q, k, v = r(B, T, H, dh), r(B, T, S, H, dh), r(B, T, S, H, dh)
    cum = r(B, T, H, S, scale=2.0, dt=cum_dtype or dtype)
    decay = torch.rand(H, generator=g).clamp(0.05, 0.95).to(DEVICE).requires_grad_()
    active = (torch.rand(B, T, generator=g) > 0.4).to(DEVICE) if masked else None
    return q, k, v, cum, decay, active


@pytest.mark.parametrize("masked,dtype,cum_dtype", [(False, torch.float32, None), (True, torch.float32, None),
                                                     (True, torch.bfloat16, torch.float32)],
                         ids=["all-active", "halted", "bf16+fp32cum"])
def test_opcheck(masked, dtype, cum_dtype):
    """Schema, fake implementation (against the real outputs) and autograd registration; bf16
    projections beside a float32 cum are what autocast gives."""
    q, k, v, cum, decay, active = inputs(*SHAPE, dtype=dtype, cum_dtype=cum_dtype, masked=masked)
    torch.library.opcheck(OP, (q, k, v, cum, decay, 2.0, active),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_opcheck_backward_op():
    q, k, v, cum, decay, active = (t.detach() if t is not None else None for t in inputs(*SHAPE))
    g_out, g_cum = torch.randn_like(q), torch.randn_like(cum)
    for gc in (g_cum, None):
        torch.library.opcheck(BACKWARD_OP, (q, k, v, cum, decay, 2.0, active, g_out, gc),
                              test_utils=("test_schema", "test_faketensor"))


def test_opcheck_aot_dispatch():
    """AOTAutograd over the op, static and dynamic shapes: forward and backward traced with the fakes."""
    q, k, v, cum, decay, active = inputs(*SHAPE)
    torch.library.opcheck(OP, (q, k, v, cum, decay, 2.0, active),
                          test_utils=("test_aot_dispatch_static", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("dtypes", [(torch.float32, None), (torch.bfloat16, None), (torch.bfloat16, torch.float32)],
                         ids=["fp32", "bf16", "bf16+fp32cum"])
def test_fake_outputs_match_the_real_ones(dtypes):
    """Under FakeTensorMode nothing runs, yet shapes, dtypes and strides are the real op's (autocast
    gives bf16 projections beside a float32 cum, so cum and raw come out float32)."""
    real = inputs(*SHAPE, dtype=dtypes[0], cum_dtype=dtypes[1])
    with torch.no_grad():
        want = OP(*real[:5], 2.0, real[5])
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) if t is not None else None for t in real]
        got = OP(*fake[:5], 2.0, fake[5])
    for g, w in zip(got, want):
        assert (g.shape, g.dtype, g.stride(), g.device) == (w.shape, w.dtype, w.stride(), w.device)
    B, T, H, S, dh = SHAPE
    assert [tuple(t.shape) for t in got] == [(B, T, H, dh), (B, T, H, S), (B, T, H, S)]


def _loss(out, cum_new):
    """A scalar that weighs every output element differently, so that each gradient is checked."""
    g = torch.Generator().manual_seed(7)
    go = torch.randn(out.shape, generator=g).to(out)
    gc = torch.randn(cum_new.shape, generator=g).to(cum_new)
    return (out * go).sum() + (cum_new * gc).sum()


def _one_step(q, k, v, cum, decay, active):
    return workspace_step_fused(q, k, v, cum, decay, 2.0, active)


def _two_steps(q, k, v, cum, decay, active):
    """Two chained steps, as the K loop runs them: the second reads the first's out and cum."""
    out, cum1, _ = workspace_step_fused(q, k, v, cum, decay, 2.0, active)
    return workspace_step_fused(q + out, k, v, cum1, decay, 2.0, active)


def test_compile_has_no_graph_break():
    """One graph, in which each step is one node: the custom op."""
    torch._dynamo.reset()
    explain = torch._dynamo.explain(_two_steps)(*inputs(*SHAPE))
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1
    targets = [str(n.target) for n in explain.graphs[0].graph.nodes if n.op == "call_function"]
    assert targets.count("parallax_kernels.workspace_step") == 2, targets


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("fn", [_one_step, _two_steps], ids=["one-step", "two-steps"])
def test_compiled_matches_eager(fn, backend):
    """fullgraph=True raises on any graph break; forward and gradients equal the eager op's."""
    torch._dynamo.reset()
    args = inputs(*SHAPE)
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    want, got = fn(*args), compiled(*args)
    want_grads = torch.autograd.grad(_loss(*want[:2]), args[:5])
    got_grads = torch.autograd.grad(_loss(*got[:2]), args[:5])
    for g, w in zip((*got, *got_grads), (*want, *want_grads)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert not got[2].requires_grad  # raw carries no gradient, compiled or not


def test_compiled_op_matches_reference():
    """The compiled fused step against the pure-PyTorch reference, forward and backward."""
    torch._dynamo.reset()
    args = inputs(*SHAPE, seed=3)
    got = torch.compile(_two_steps, fullgraph=True, backend="aot_eager")(*args)
    out, cum1, _ = workspace_step_ref(*args[:5], 2.0, args[5])
    want = workspace_step_ref(args[0] + out, *args[1:3], cum1, args[4], 2.0, args[5])
    got_grads = torch.autograd.grad(_loss(*got[:2]), args[:5])
    want_grads = torch.autograd.grad(_loss(*want[:2]), args[:5])
    for g, w in zip((*got, *got_grads), (*want, *want_grads)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
