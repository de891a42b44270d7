"""assert_expert_conforms accepts a correct expert and rejects each deliberately broken one with a
message that names the failed check and what is wrong."""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import parallax
from parallax.testing import ConformanceError, assert_expert_conforms


class RunningMean(parallax.Expert):
    """Correct and h-clocked: each slot mixes h_eff with the mean of the observations so far."""

    clock = "h"

    class Config(parallax.Spec):
        type: str = "running_mean"
        slots: int = 2

    def __init__(self, cfg, d_model, info):
        super().__init__()
        self.slots = cfg.slots
        self.proj = nn.Linear(2 * d_model, cfg.slots * d_model)

    def context(self, x):
        count = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[:, None]  # (T,1)
        return x.cumsum(dim=1) / count  # (B,T,d)

    def context_step(self, x_t, cache):
        total, n = (x_t, 1) if cache is None else (cache[0] + x_t, cache[1] + 1)
        return total / n, (total, n)

    def propose(self, h_eff, ctx, positions):
        return self.proj(torch.cat([h_eff, ctx], dim=-1)).unflatten(-1, (self.slots, ctx.shape[-1]))  # (B,T,S,d)


class WrongShape(RunningMean):
    def propose(self, h_eff, ctx, positions):
        return super().propose(h_eff, ctx, positions)[:, :, :1]  # drops a slot


class LooksAhead(RunningMean):
    def context(self, x):
        return x.mean(dim=1, keepdim=True).expand_as(x)  # every position sees the whole sequence


class ForgetsCache(RunningMean):
    def context_step(self, x_t, cache):
        return x_t, None  # the mean of this position alone


class IgnoresH(RunningMean):
    def propose(self, h_eff, ctx, positions):
        return super().propose(torch.zeros_like(ctx), ctx, positions)


class TokenReadsH(RunningMean):
    clock = "token"

    def propose(self, h_eff, ctx, positions):
        return super().propose(ctx if h_eff is None else h_eff, ctx, positions)


class ReadsNeighbourH(RunningMean):
    def propose(self, h_eff, ctx, positions):
        return super().propose(h_eff + h_eff.roll(1, dims=1), ctx, positions)


class UnsavedTensor(RunningMean):
    def __init__(self, cfg, d_model, info):
        super().__init__(cfg, d_model, info)
        self.rotation = torch.randn(d_model, d_model)  # a plain attribute: not in the state dict

    def propose(self, h_eff, ctx, positions):
        return super().propose(h_eff @ self.rotation.to(h_eff.dtype), ctx, positions)


class SharedTensor(RunningMean):
    def __init__(self, cfg, d_model, info):
        super().__init__(cfg, d_model, info)
        self.alias = self.proj  # the same weights under two names


class CachesUnderNoGrad(RunningMean):
    """Memoises the projection of ctx across K steps, so the live step reuses a frozen tensor."""

    def __init__(self, cfg, d_model, info):
        super().__init__(cfg, d_model, info)
        self.ctx_proj = nn.Linear(d_model, d_model)
        self._memo = None

    def propose(self, h_eff, ctx, positions):
        if self._memo is None or self._memo[0] is not ctx:
            self._memo = (ctx, self.ctx_proj(ctx))
        return super().propose(h_eff, self._memo[1], positions)


class BreaksUnderAutocast(RunningMean):
    def propose(self, h_eff, ctx, positions):
        out = super().propose(h_eff, ctx, positions)  # bf16 under autocast
        return torch.lerp(out, ctx[:, :, None, :].expand_as(out), 0.5)  # ctx stays float32: lerp refuses


class AlwaysFloat64(RunningMean):
    def propose(self, h_eff, ctx, positions):
        return super().propose(h_eff, ctx, positions).double()


class NoClock(RunningMean):
    clock = "sometimes"


class LaxConfig(RunningMean):
    class Config(parallax.Spec):
        model_config = {"extra": "allow"}
        type: str = "running_mean"
        slots: int = 2


class PacksRunningMean(RunningMean):
    """Correct, and accepts packed queries: query n reads row rows[n]'s mean up to positions[n]."""

    packs = True

    def propose(self, h_eff, ctx, positions, rows=None):
        c = ctx if rows is None else ctx[rows, positions][None]  # (B,T,d) or (1,N,d)
        return self.proj(torch.cat([h_eff, c], dim=-1)).unflatten(-1, (self.slots, c.shape[-1]))


class PacksWrongRow(PacksRunningMean):
    def propose(self, h_eff, ctx, positions, rows=None):  # every packed query reads row 0
        return super().propose(h_eff, ctx, positions, None if rows is None else torch.zeros_like(rows))


def test_a_correct_expert_passes():
    assert_expert_conforms(RunningMean)
    assert_expert_conforms(RunningMean, {"slots": 3}, d_model=8, batch=1, seq=4)
    assert_expert_conforms(PacksRunningMean)


@pytest.mark.parametrize(
    "cls,needle",
    [
        (WrongShape, r"shapes: propose returned shape \(2, 9, 1, 16\); expected \(B,T,S_e,d\) = \(2, 9, 2, 16\)"),
        (LooksAhead,
         r"causality: the proposal at position 0 changed when only observations and h_eff at positions >= 1"),
        (ForgetsCache, r"incremental: the incremental path .* differs from the parallel path .* at position 1"),
        (IgnoresH, r"clock: declares clock 'h' but its proposals do not change with h_eff"),
        (TokenReadsH, r"clock: declares clock 'token' but its proposals change with h_eff"),
        (ReadsNeighbourH, r"h_locality: the proposal at position 5 changed when only h_eff at position 4 changed"),
        (UnsavedTensor, r"state_dict: a fresh instance that loads the state dict gives other outputs"),
        (SharedTensor, r"safetensors: safetensors cannot save the state dict"),
        (CachesUnderNoGrad, r"no_grad_then_live: .*'ctx_proj.weight' gets no gradient from the live step"),
        (BreaksUnderAutocast, r"autocast: raised RuntimeError: expected dtype"),
        (AlwaysFloat64, r"dtypes: propose returned torch.float64 for float32 inputs"),
        (NoClock, r"protocol: clock is 'sometimes'"),
        (LaxConfig, r"protocol: Config allows unknown keys"),
        (PacksWrongRow, r"packed: packed queries .* differ from the proposals at the same rows and positions"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_a_broken_expert_is_rejected_with_the_reason(cls, needle):
    with pytest.raises(ConformanceError, match=needle) as caught:
        assert_expert_conforms(cls)
    first = str(caught.value).splitlines()[0]
    assert first.startswith(f"expert {cls.__name__} fails") and "conformance check" in first


def test_each_failure_is_on_its_own_line_and_others_still_run():
    with pytest.raises(ConformanceError) as caught:
        assert_expert_conforms(LooksAhead)
    failed = [ln.split(":")[0].strip(" -") for ln in str(caught.value).splitlines()[1:]]
    assert failed == ["causality", "incremental"]


def test_skip_leaves_a_check_out_and_rejects_unknown_names():
    assert_expert_conforms(BreaksUnderAutocast, skip=["autocast"])
    with pytest.raises(ValueError, match="unknown check.*autocasts"):
        assert_expert_conforms(RunningMean, skip=["autocasts"])


def test_a_registered_name_resolves_through_the_registry_and_must_match_config_type(register_plugin):
    plugin = types.SimpleNamespace(register_experts=parallax.hookimpl(lambda register: (
        register("running_mean", RunningMean), register("renamed", RunningMean))))
    register_plugin(plugin, "kit-test")
    assert_expert_conforms("running_mean")
    with pytest.raises(ConformanceError,
                       match="Config.type defaults to 'running_mean' but the plugin registers it as 'renamed'"):
        assert_expert_conforms("renamed")


def test_an_options_schema_that_rejects_the_config_is_reported():
    with pytest.raises(ConformanceError, match="Config rejects .*slotz"):
        assert_expert_conforms(RunningMean, {"slotz": 3})


def test_a_constructor_that_raises_is_reported():
    class Raises(RunningMean):
        def __init__(self, cfg, d_model, info):
            raise ValueError("needs a vocabulary")

    with pytest.raises(ConformanceError, match="the constructor raised ValueError: needs a vocabulary"):
        assert_expert_conforms(Raises)


def test_the_callers_random_state_is_left_alone():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    assert_expert_conforms(RunningMean)
    torch.testing.assert_close(torch.rand(3), want)
