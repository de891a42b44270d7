"""The reference workspace step against the equations of DESIGN.md §2.3, written out slot by slot."""
from __future__ import annotations

import math

import torch

from parallax_kernels.workspace import workspace_step_ref


def test_reference_matches_the_equations():
    B, T, S, H, dh = 2, 3, 5, 2, 4
    q, k, v = torch.randn(B, T, H, dh), torch.randn(B, T, S, H, dh), torch.randn(B, T, S, H, dh)
    cum, decay, base = torch.randn(B, T, H, S), torch.tensor([0.9, 0.5]), 3.0
    out, new_cum, raw = workspace_step_ref(q, k, v, cum, decay, base)
    for b in range(B):
        for t in range(T):
            for h in range(H):
                acc = torch.zeros(dh)
                for s in range(S):
                    r = (q[b, t, h] * k[b, t, s, h]).sum() / math.sqrt(dh)
                    c = decay[h] * cum[b, t, h, s] + (1 - decay[h]) + r
                    w = math.log1p(float(torch.nn.functional.silu(c))) / math.log(base)
                    acc += w * v[b, t, s, h]
                    assert torch.isclose(raw[b, t, h, s], r, atol=1e-6)
                    assert torch.isclose(new_cum[b, t, h, s], c, atol=1e-6)
                torch.testing.assert_close(out[b, t, h], acc, rtol=1e-5, atol=1e-6)


def test_cum_is_pulled_toward_one_without_input():
    # With zero logits the fixed point of cum = d*cum + (1-d) is 1 (the pull toward unit mass).
    q, k, v = torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 3, 1, 2), torch.zeros(1, 1, 3, 1, 2)
    cum = torch.full((1, 1, 1, 3), 5.0)
    for _ in range(200):
        _, cum, _ = workspace_step_ref(q, k, v, cum, torch.tensor([0.8]), 2.0)
    torch.testing.assert_close(cum, torch.ones_like(cum), atol=1e-6, rtol=0)
