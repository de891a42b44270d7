"""What is particular to the built-in experts. The protocol itself (shapes, clocks, causality,
incremental == parallel, round trips) is checked for every built-in in test_conformance.py."""
from __future__ import annotations

import pytest
import torch

import parallax
from parallax.registry import get_registry
from parallax_plugins.experts.mamba_siso import affine_scan

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
