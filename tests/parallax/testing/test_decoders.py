"""assert_decoder_conforms rejects each deliberately broken decoder with the check and the fault
(the built-in motor decoder passes: tests/plugins/test_conformance.py)."""
from __future__ import annotations

import pytest

from parallax.registry import get_registry
from parallax.testing import ConformanceError, assert_decoder_conforms

Motor = get_registry().get("decoders", "motor")


class SeesTheFuture(Motor):
    def forward(self, h, positions=None):
        return super().forward(h.flip(1), positions).flip(1)  # reads the sequence backwards


class RegistersTiedTable(Motor):
    def tie(self, weight):
        self.head.weight = weight  # now the model's state dict would hold the table twice


class TiesOnce(Motor):
    def tie(self, weight):
        if not self._tied:  # a second call is ignored: under FSDP the head would train a stale table
            super().tie(weight)


@pytest.mark.parametrize(
    "cls,needle",
    [
        (SeesTheFuture, r"causality: the logits at position 0 changed when only settled states at positions >= 1"),
        (RegistersTiedTable, r"tie: tie registered the shared table as a parameter of the decoder"),
        (TiesOnce, r"tie: a second tie\(weight\) left the head on the first table"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_broken_decoder_is_rejected(cls, needle):
    with pytest.raises(ConformanceError, match=needle):
        assert_decoder_conforms(cls, {"context": 4, "heads": 2})
