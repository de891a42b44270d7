"""causal_conv: the Expert protocol (through the installed entry point), and each scale's reach."""
from __future__ import annotations

import pytest
import torch

import parallax
from parallax.registry import get_registry
from parallax.testing import assert_expert_conforms


@pytest.mark.parametrize(
    "options",
    [{}, {"slots": 1, "kernel_size": 2}, {"slots": 4, "kernel_size": 2, "dilation_base": 3}, {"dilation_base": 1}],
    ids=str,
)
def test_conforms(options):
    assert_expert_conforms("causal_conv", options)


def test_each_slot_reads_exactly_its_scale():
    cls = get_registry().get("experts", "causal_conv")
    expert = cls(cls.Config(slots=3, kernel_size=3, dilation_base=2), 8, parallax.DataInfo()).eval()
    x = torch.randn(1, 12, 8)  # (B,T,d)
    t = 11
    with torch.no_grad():
        base = expert.context(x)[:, t]  # (B,S,d)
        for j, dil in enumerate(expert.dilations):
            reach = 2 * dil  # (kernel_size - 1) * dilation
            inside, outside = x.clone(), x.clone()
            inside[:, t - reach] += 1.0
            outside[:, t - reach - 1] += 1.0
            assert not torch.allclose(expert.context(inside)[:, t, j], base[:, j])
            torch.testing.assert_close(expert.context(outside)[:, t, j], base[:, j])
