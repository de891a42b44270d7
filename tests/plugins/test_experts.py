"""What is particular to the built-in experts. The protocol itself (shapes, clocks, causality,
incremental == parallel, round trips) is checked for every built-in in test_conformance.py."""
from __future__ import annotations

import pytest
import torch

import parallax
from parallax.registry import get_registry
from parallax_plugins.experts.mamba_siso import _scan, _scan_backward_parallel, _scan_backward_sequential, affine_scan

D, B, T = 16, 2, 9
INFO = parallax.DataInfo(vocab_size=10)


def make(name: str, **opts) -> parallax.Expert:
    cls = get_registry().get("experts", name)
    return cls(cls.Config(type=name, **opts), D, INFO).eval()


def test_affine_scan_matches_recurrence():
    a, b = torch.rand(3, 13, 4, 2), torch.randn(3, 13, 4, 2)
    s, ref = torch.zeros(3, 4, 2), []
    for t in range(13):
        s = a[:, t] * s + b[:, t]
        ref.append(s)
    torch.testing.assert_close(affine_scan(a, b), torch.stack(ref, dim=1))


@pytest.mark.parametrize("sequential", [True, False])
def test_affine_scan_forms_agree_with_the_recurrence(sequential):
    a, b = torch.rand(2, 11, 3, 2, dtype=torch.float64), torch.randn(2, 11, 3, 2, dtype=torch.float64)
    ref = torch.stack([_loop(a, b)[:, t] for t in range(11)], dim=1)
    torch.testing.assert_close(_scan(a, b, sequential=sequential), ref)


def _loop(a, b):
    s, out = torch.zeros_like(b[:, 0]), []
    for t in range(a.shape[1]):
        s = a[:, t] * s + b[:, t]
        out.append(s)
    return torch.stack(out, dim=1)


def test_affine_scan_gradient_is_the_recurrences():
    """The scan's own backward (a reverse scan) against autograd through the plain loop, and gradcheck."""
    a = torch.rand(2, 9, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 9, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 9, 3, 2, dtype=torch.float64)
    ga, gb = torch.autograd.grad((affine_scan(a, b) * w).sum(), (a, b))
    ra, rb = torch.autograd.grad((_loop(a, b) * w).sum(), (a, b))
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)
    assert torch.autograd.gradcheck(affine_scan, (a, b))
    # the other device's form of the backward, a reverse scan over the whole tensors, agrees
    s = _scan(a.detach(), b.detach())
    for got, want in zip(_scan_backward_parallel(a.detach(), s, w), _scan_backward_sequential(a.detach(), s, w)):
        torch.testing.assert_close(got, want)


def test_attention_probe_rejects_odd_head_width():
    with pytest.raises(parallax.ConfigError, match="heads"):
        make("attention_probe", heads=3)


@pytest.mark.gpu
def test_mamba_ssm_fast_path_matches_pure_scan():
    from parallax_plugins.experts import mamba_siso

    if mamba_siso._selective_scan_fn is None or not torch.cuda.is_available():
        pytest.skip("needs the mamba_ssm package and a CUDA device")
    e = make("mamba_siso").cuda()
    x = torch.randn(B, T, D, device="cuda")
    fast = e.context(x)
    a, b, C = e._coeffs(x)
    ref = e._readout(affine_scan(a, b), C, x)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


def test_covariance_probe_with_a_learned_probe_is_causal_and_incremental():
    """W_r starts at zero (softmax attention); with W_r != 0 the correction is live and still causal."""
    e = make("attention_probe", variant="covariance", block=3)
    soft = make("attention_probe")
    soft.load_state_dict({k: v for k, v in e.state_dict().items() if not k.startswith("r_proj")})
    x, h, pos = torch.randn(B, T, D), torch.randn(B, T, D), torch.arange(T)
    with torch.no_grad():
        torch.testing.assert_close(e.propose(h, e.context(x), pos), soft.propose(h, soft.context(x), pos))
        e.r_proj.weight.normal_()
        full = e.propose(h, e.context(x), pos)  # (B,T,S,d)
        assert (full - soft.propose(h, soft.context(x), pos)).abs().max() > 1e-2
        cache, steps = None, []
        for t in range(T):
            ctx, cache = e.context_step(x[:, t : t + 1], cache)
            steps.append(e.propose(h[:, t : t + 1], ctx, pos[t : t + 1]))
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
        x2 = x.clone()
        x2[:, 5:] += 1.0
        torch.testing.assert_close(e.propose(h, e.context(x2), pos)[:, :5], full[:, :5])


def test_memory_bank_diagnostics_see_collapse():
    e = make("memory_bank", entries=8)
    e.context(torch.randn(B, T, D))
    diag = e.diagnostics()
    assert abs(diag["bank_cosine"]) < 0.3  # random entries in 16 dims are nearly orthogonal
    assert 0 < diag["bank_entropy"] <= 1
    with torch.no_grad():
        e.bank.copy_(torch.randn(1, D).expand(8, D) + 0.01 * torch.randn(8, D))  # collapsed
        e.q_proj.weight.zero_()  # a query that prefers no entry: uniform attention
    e.context(torch.randn(B, T, D))
    diag = e.diagnostics()
    assert diag["bank_cosine"] > 0.99
    assert diag["bank_entropy"] == pytest.approx(1.0, abs=1e-5)


def test_memory_bank_can_start_collapsed():
    assert make("memory_bank", entries=8, init="collapsed").diagnostics()["bank_cosine"] > 0.99
    assert "bank_entropy" not in make("memory_bank").diagnostics()  # no read yet


def test_memory_bank_ablation_drops_entries_and_restores_them():
    e = make("memory_bank", entries=10)
    x = torch.randn(B, T, D)
    with torch.no_grad():
        full = e.context(x)
        with e.ablate(0.5, seed=3) as dropped:
            assert dropped == 5 and int(e.keep.sum()) == 5
            part = e.context(x)
            a = e._attention(x)
            assert bool((a[..., ~e.keep] == 0).all())  # dropped entries get no attention
        assert bool(e.keep.all())
        torch.testing.assert_close(e.context(x), full)
    assert (part - full).abs().max() > 1e-4
    assert "keep" not in e.state_dict()  # an ablation is never saved with a checkpoint


@pytest.mark.parametrize("name,share", [("attention_probe", 0.5), ("attention_probe", 0.02), ("mlp_probe", 0.5),
                                        ("siren", 0.5)])
def test_packed_queries_read_their_own_row_up_to_their_own_position(name, share):
    """Half the positions take the probe's per-row layout; 2% of them (fewer queries than rows) gather
    each query's own row."""
    probe = make(name).double()
    x = torch.randn(B + 1, T, D, dtype=torch.float64)
    h_eff = torch.randn(B + 1, T, D, dtype=torch.float64)
    ctx = probe.context(x)
    dense = probe.propose(h_eff, ctx, torch.arange(T))  # (B+1,T,S,d) every position of every row
    # an uneven set of queries, with row 1 left out entirely
    active = torch.rand(B + 1, T) < share
    active[1] = False
    active[0, -1] = True
    assert (active.sum() <= B + 1) == (share < 0.1)  # the two layouts, both tested
    rows, pos = active.nonzero(as_tuple=True)  # ascending rows
    packed = probe.propose(h_eff[rows, pos][None], ctx, pos, rows=rows)  # (1,N,S,d)
    assert probe.packs and packed.shape == (1, rows.numel(), *dense.shape[2:])
    torch.testing.assert_close(packed[0], dense[rows, pos], rtol=1e-10, atol=1e-12)


def test_covariance_probe_does_not_pack():
    assert not make("attention_probe", variant="covariance").packs and make("attention_probe").packs
