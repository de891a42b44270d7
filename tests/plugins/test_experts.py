"""Every built-in expert: incremental step == parallel forward, causality, and clock semantics."""
from __future__ import annotations

import pytest
import torch

import parallax
from parallax.registry import get_registry
from parallax_plugins.experts.mamba_siso import affine_scan

D, B, T = 16, 2, 9
INFO = parallax.DataInfo(vocab_size=10)
NAMES = ["mamba_siso", "attention_probe", "mlp_probe", "siren"]


def make(name: str, **opts) -> parallax.Expert:
    cls = get_registry().get("experts", name)
    return cls(cls.Config(type=name, **opts), D, INFO).eval()


def parallel(e, x, h):
    return e.propose(h, e.context(x), torch.arange(x.shape[1]))  # (B,T,S,d)


def incremental(e, x, h):
    outs, cache = [], None
    for t in range(x.shape[1]):
        ctx, cache = e.context_step(x[:, t : t + 1], cache)
        outs.append(e.propose(h[:, t : t + 1], ctx, torch.tensor([t])))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("name", NAMES)
def test_incremental_step_equals_parallel_forward(name):
    e = make(name)
    x, h = torch.randn(B, T, D), torch.randn(B, T, D)
    par, inc = parallel(e, x, h), incremental(e, x, h)
    assert par.shape == (B, T, e.slots, D)
    torch.testing.assert_close(inc, par, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_expert_is_causal(name):
    e = make(name)
    x, h = torch.randn(B, T, D), torch.randn(B, T, D)
    x2, h2 = x.clone(), h.clone()
    x2[:, 5:] += 1.0
    h2[:, 5:] += 1.0
    a, b = parallel(e, x, h), parallel(e, x2, h2)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("name", NAMES)
def test_clock_dependence_on_h(name):
    e = make(name)
    x, h = torch.randn(B, T, D), torch.randn(B, T, D)
    changed = not torch.allclose(parallel(e, x, h), parallel(e, x, h + 1.0))
    assert changed == (e.clock == "h"), f"{name} declares clock {e.clock!r}"


def test_affine_scan_matches_recurrence():
    a, b = torch.rand(3, 13, 4, 2), torch.randn(3, 13, 4, 2)
    s, ref = torch.zeros(3, 4, 2), []
    for t in range(13):
        s = a[:, t] * s + b[:, t]
        ref.append(s)
    torch.testing.assert_close(affine_scan(a, b), torch.stack(ref, dim=1))


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
