"""assert_workspace_conforms rejects each deliberately broken workspace with the check and the fault
(the built-in cws workspace passes: tests/plugins/test_conformance.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import parallax
from parallax.registry import get_registry
from parallax.testing import ConformanceError, assert_workspace_conforms

CWS = get_registry().get("workspaces", "cws")


class MixesPositions(CWS):
    def read(self, h):
        return super().read(h + h.mean(dim=1, keepdim=True))  # every position reads the average state


class NormalisesAcrossSlots(CWS):
    def project_slots(self, slots):
        k, v = super().project_slots(slots)  # (B,T,S,H,dh)
        return k - k.mean(dim=2, keepdim=True), v


class RawWithoutHeads(CWS):
    def step(self, state, h_eff, k, v):
        new, raw = super().step(state, h_eff, k, v)
        return new, raw.mean(dim=2)  # (B,T,S): the halting rule expects (B,T,H,S)


@pytest.mark.parametrize(
    "cls,needle",
    [
        (MixesPositions, r"positions: the state at position 0 changed when only position 2's inputs changed"),
        (NormalisesAcrossSlots, r"slotwise: project_slots of a concatenation differs"),
        (RawWithoutHeads, r"shapes: step returned raw logits of shape \(2, 5, 4\); expected \(B,T,H,S\)"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_broken_workspace_is_rejected(cls, needle):
    with pytest.raises(ConformanceError, match=needle):
        assert_workspace_conforms(cls)


class UpdatesHaltedPositions(CWS):
    """Reads ``active`` the wrong way round: updates the halted positions and keeps the active ones."""

    def step(self, state, h_eff, k, v, active=None):
        new, raw = super().step(state, h_eff, k, v)
        if active is not None:
            m = active[..., None]  # (B,T,1)
            new = parallax.WorkspaceState(torch.where(m, state.h, new.h), torch.where(m[..., None], state.cum, new.cum))
        return new, raw


def test_a_workspace_that_updates_halted_positions_fails_the_halted_check():
    with pytest.raises(ConformanceError) as caught:
        assert_workspace_conforms(UpdatesHaltedPositions)
    message = str(caught.value)
    assert "halted: in the real K loop (masked), with positions halting after different steps" in message
    assert "fails 1 conformance check" in message  # the kit's own loop never passes `active`: only this check sees it


def test_workspace_that_keeps_state_between_calls_fails_the_frozen_then_live_check():
    class RemembersLastOutput(CWS):
        def __init__(self, cfg, d_model, info):
            super().__init__(cfg, d_model, info)
            self.last = None

        def step(self, state, h_eff, k, v):
            new, raw = super().step(state, h_eff, k, v)
            h = new.h if self.last is None else new.h + 0.1 * self.last
            self.last = new.h.detach()
            return parallax.WorkspaceState(h=h, cum=new.cum), raw

    with pytest.raises(ConformanceError, match="no_grad_then_live: after frozen steps under torch.no_grad"):
        assert_workspace_conforms(RemembersLastOutput, skip=["positions", "incremental", "state_dict", "safetensors",
                                                             "dtypes", "autocast"])


def test_a_class_without_config_is_rejected_up_front():
    class Bare(nn.Module):
        pass

    with pytest.raises(ConformanceError, match="declares no nested `class Config"):
        assert_workspace_conforms(Bare)
    with pytest.raises(TypeError, match="class or its registry name"):
        assert_workspace_conforms(torch.zeros(1))
