"""Covariance-corrected attention: the streaming implementation against its reference and SDPA."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from parallax_kernels.covariance_attention import covariance_attention, covariance_attention_ref


def inputs(B=2, Hq=4, Hk=2, Tq=11, Tk=11, dh=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, r = (torch.randn(B, Hq, Tq, dh, generator=g, dtype=dtype) for _ in range(2))
    k, v = (torch.randn(B, Hk, Tk, dh, generator=g, dtype=dtype) for _ in range(2))
    q_pos = torch.arange(Tk - Tq, Tk)  # the last Tq positions, as in a suffix of the sequence
    return q, k, v, r, q_pos


@pytest.mark.parametrize("block", [1, 4, 64])
def test_with_zero_probe_it_is_softmax_attention(block):
    q, k, v, r, q_pos = inputs(Tq=13, Tk=13)
    mask = torch.arange(13)[None, :] <= q_pos[:, None]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    got = covariance_attention(q, k, v, torch.zeros_like(r), q_pos, block=block)
    assert (got - want).abs().max().item() <= 1e-5


def test_reference_with_zero_probe_is_softmax_attention():
    q, k, v, r, q_pos = inputs()
    mask = torch.arange(11)[None, :] <= q_pos[:, None]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert (covariance_attention_ref(q, k, v, torch.zeros_like(r), q_pos) - want).abs().max().item() <= 1e-5


def test_reference_matches_the_definition_per_query():
    q, k, v, r, q_pos = inputs(B=1, Hq=1, Hk=1, Tq=5, Tk=5, dh=3)
    out = covariance_attention_ref(q, k, v, r, q_pos)
    i = 3
    w = torch.softmax(q[0, 0, i] @ k[0, 0, : i + 1].T / 3 ** 0.5, -1)  # (i+1,)
    s = k[0, 0, : i + 1] @ r[0, 0, i]
    mu = w @ v[0, 0, : i + 1]
    cov = (w[:, None] * (v[0, 0, : i + 1] - mu) * (s - w @ s)[:, None]).sum(0)
    torch.testing.assert_close(out[0, 0, i], mu - cov)
    assert (out - F.scaled_dot_product_attention(q, k, v, is_causal=True)).abs().max() > 1e-2  # r matters


@pytest.mark.parametrize("block,Tq", [(3, 10), (16, 10), (4, 1)])
def test_streaming_matches_reference_forward_and_backward(block, Tq):
    q, k, v, r, q_pos = inputs(Tq=Tq, Tk=10, seed=1)
    leaves = [t.requires_grad_() for t in (q, k, v, r)]
    want = covariance_attention_ref(q, k, v, r, q_pos)
    got = covariance_attention(q, k, v, r, q_pos, block=block)
    assert (got - want).abs().max().item() <= 1e-4
    up = torch.randn_like(want)
    gw = torch.autograd.grad(want, leaves, up)
    gg = torch.autograd.grad(got, leaves, up)
    for name, a, b in zip("qkvr", gg, gw):
        assert (a - b).abs().max().item() <= 1e-4, name


def test_streaming_gradcheck_in_float64():
    q, k, v, r, q_pos = inputs(B=1, Hq=2, Hk=1, Tq=5, Tk=5, dh=3, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (q, k, v, r)]
    assert torch.autograd.gradcheck(lambda *a: covariance_attention(*a, q_pos, block=2), leaves)


def test_streaming_saves_no_tensor_of_query_by_key_size():
    """The memory profile of SDPA: nothing saved for backward grows with Tq*Tk."""
    Tq = Tk = 96
    q, k, v, r, q_pos = inputs(B=1, Hq=2, Hk=2, Tq=Tq, Tk=Tk, dh=4)
    for t in (q, k, v, r):
        t.requires_grad_()
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        covariance_attention(q, k, v, r, q_pos, block=16).sum().backward()
    assert max(sizes) <= 2 * Tq * 4  # q, k, v, r, mu, ...: O(T·dh), never (Tq,Tk)=9216 per head
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        covariance_attention_ref(q, k, v, r, q_pos).sum().backward()
    assert max(sizes) >= 2 * Tq * Tk  # the reference does materialise the weights
