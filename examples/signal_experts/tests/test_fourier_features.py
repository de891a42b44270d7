"""fourier_features: the Expert protocol (through the installed entry point), and its kernel prior."""
from __future__ import annotations

import pytest
import torch

import parallax
from parallax.registry import get_registry
from parallax.testing import assert_expert_conforms


def make(**options):
    cls = get_registry().get("experts", "fourier_features")
    return cls(cls.Config(**options), 16, parallax.DataInfo()).eval()


@pytest.mark.parametrize("options", [{}, {"slots": 3, "features": 8}, {"learn_frequencies": True}], ids=str)
def test_conforms(options):
    assert_expert_conforms("fourier_features", options)


def test_frequencies_are_saved_and_learned_only_when_asked():
    fixed, learned = make(), make(learn_frequencies=True)
    assert "omega" in fixed.state_dict() and all(p is not fixed.omega for p in fixed.parameters())
    assert any(p is learned.omega for p in learned.parameters())


def test_nearby_states_get_similar_features():
    expert = make(features=256, scale=0.1)
    h = torch.randn(1, 1, 16)  # (B,T,d)
    with torch.no_grad():
        a, near, far = (expert.propose(v, None, torch.arange(1)) for v in (h, h + 0.01, h + 3.0))
    assert (a - near).norm() < 0.1 * (a - far).norm()
