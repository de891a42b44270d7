"""assert_encoder_conforms rejects each deliberately broken encoder with the check and the fault
(the built-in token encoder passes: tests/plugins/test_conformance.py)."""
from __future__ import annotations

import pytest
import torch.nn.functional as F

import parallax
from parallax.registry import get_registry
from parallax.testing import ConformanceError, assert_encoder_conforms

Token = get_registry().get("encoders", "token")


class ReadsNextToken(Token):
    def forward(self, inputs):
        x = super().forward(inputs)  # (B,T,d)
        return x + F.pad(x[:, 1:], (0, 0, 0, 1))  # x_t also sees x_{t+1}


class StepForgetsWindow(Token):
    def step(self, inputs_t, cache):
        return super().step(inputs_t, None)


class CopiesTiedWeight(Token):
    @property
    def tied_weight(self):
        return self.embed.weight.detach().clone()


@pytest.mark.parametrize(
    "cls,needle",
    [
        (ReadsNextToken,
         r"causality: the observation at position 0 changed when only inputs at positions >= 1 changed"),
        (StepForgetsWindow, r"incremental: step, one input at a time, differs from forward at position 1"),
        (CopiesTiedWeight, r"tied_weight: tied_weight must be one of the encoder's own parameters"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_broken_encoder_is_rejected(cls, needle):
    with pytest.raises(ConformanceError, match=needle):
        assert_encoder_conforms(cls)


def test_encoder_needs_a_vocabulary_or_inputs():
    with pytest.raises(ValueError, match="inputs"):
        assert_encoder_conforms("token", info=parallax.DataInfo())
