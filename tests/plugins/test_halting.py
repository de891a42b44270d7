"""The learned halting rule: it trains with the model, starts deep, halts per position, and is saved."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parallax import checkpoint as ckpt
from parallax.build import build_data
from parallax.cli.main import main
from parallax.model import build_model
from parallax.recipe import load_recipe
from parallax.registry import get_registry

LEARNED = ["model.halting.type=learned", "~model.halting.rel_tol", "~model.halting.abs_tol", "~model.halting.k_min"]


def learned_model(tiny_recipe, *overrides):
    recipe = load_recipe(str(tiny_recipe), [*LEARNED, *overrides])
    data = build_data(recipe, get_registry())
    return build_model(recipe.model, data.info), data, recipe


def test_the_head_is_a_submodule_with_a_deep_start(tiny_recipe):
    model, data, _ = learned_model(tiny_recipe, "model.k_max=6")
    assert {"halting.head.weight", "halting.head.bias"} <= model.state_dict().keys()
    assert any(p is model.halting.head.weight for p in model.parameters())  # the optimizer sees it
    model.eval()
    with torch.no_grad():
        out = model(data.batch(1)["inputs"])
    assert out.k.eq(6).all()  # halting unlikely at first: every position runs to k_max
    h = torch.randn(2, 3, model.halting.head.in_features)
    assert torch.allclose(model.halting.logit(h), torch.full((2, 3), -4.0))  # the logit starts at init_bias
    assert "aux_loss" not in out.stats  # evaluation adds no loss


def test_gradients_reach_the_halting_head_and_only_from_its_own_loss(tiny_recipe):
    model, data, _ = learned_model(tiny_recipe, "model.halting.explore=0.5")
    model.train()
    batch = data.batch(1)
    out = model(batch["inputs"])
    aux = out.stats["aux_loss"]
    assert aux.requires_grad and aux.item() > 0
    task = F.cross_entropy(out.logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100)
    (task + aux).backward()
    head = model.halting.head
    assert head.weight.grad.abs().sum() > 0 and head.bias.grad.abs().sum() > 0
    # the head's loss reads a detached state: alone, it trains the head and nothing else
    model.zero_grad(set_to_none=True)
    model(batch["inputs"]).stats["aux_loss"].backward()
    touched = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched == {"halting.head.weight", "halting.head.bias"}


def test_positions_without_a_target_are_labelled_safe_to_stop(tiny_recipe):
    """Where the target is ignored (-100) no answer can change, so the label there is "stop" whatever
    the trajectory says; the head's loss then falls as its halting logit rises at those positions."""
    model, data, _ = learned_model(tiny_recipe, "model.halting.explore=1.0")
    model.train()
    inputs = data.batch(1)["inputs"]
    none_scored = torch.full(inputs.shape, -100)
    torch.manual_seed(0)
    low = model(inputs, k_max=4, targets=none_scored).stats["aux_loss"]
    with torch.no_grad():
        model.halting.head.bias.fill_(4.0)  # the head says "stop" everywhere
    torch.manual_seed(0)
    high = model(inputs, k_max=4, targets=none_scored).stats["aux_loss"]
    assert high.item() < 0.05 < low.item()  # BCE against an all-ones label: log(1 + e^-4) = 0.018
    torch.manual_seed(0)
    scored = model(inputs, k_max=4, targets=torch.zeros_like(inputs)).stats["aux_loss"]
    torch.manual_seed(0)
    assert torch.equal(scored, model(inputs, k_max=4).stats["aux_loss"])  # every position scored: no change


def test_the_correct_label_asks_whether_the_kept_steps_answer_is_the_target(tiny_recipe):
    """HRM's halting target: "stop" where the answer at the kept step is the target, "continue" elsewhere."""
    model, data, _ = learned_model(tiny_recipe, "model.halting.explore=1.0", "model.halting.label=correct")
    model.train()
    inputs = data.batch(1)["inputs"]
    answers = []
    loss = model.halting.loss

    def spy(memo, h_frozen, decode, targets=None):
        answers.append(decode(memo["kept"]).argmax(-1))
        return loss(memo, h_frozen, decode, targets)

    model.halting.loss = spy
    torch.manual_seed(0)
    vocab = model(inputs, k_max=4, targets=torch.zeros_like(inputs)).logits.shape[-1]
    with torch.no_grad():
        model.halting.head.bias.fill_(4.0)  # the head says "stop" everywhere
    torch.manual_seed(0)  # the same kept step
    right = model(inputs, k_max=4, targets=answers[0]).stats["aux_loss"]
    torch.manual_seed(0)
    wrong = model(inputs, k_max=4, targets=(answers[0] + 1) % vocab).stats["aux_loss"]
    assert torch.equal(answers[1], answers[0]) and torch.equal(answers[2], answers[0])
    assert right.item() < 0.05 and wrong.item() > 3.0  # BCE of logit +4 against 1: 0.018; against 0: 4.02


def test_the_next_correct_label_judges_the_answer_one_step_after_the_kept_state():
    """A pair (h_j, h_{j+1}) of successive states is kept, and the head at h_j learns whether the answer
    at h_{j+1} (the live step's, after a halt at j) is the target."""
    from plugins.halting import LearnedHalting

    rule = LearnedHalting(LearnedHalting.Config(label="next_correct", explore=1.0, k_min=0), d_model=4)
    rule.train()
    memo: dict = {}
    states = [torch.full((2, 3, 4), float(k)) for k in range(6)]  # h_k = k everywhere: its step is readable
    torch.manual_seed(0)
    for k, h in enumerate(states):
        rule.update(None, None, memo, k, h=h)
    j = memo["kept_k"]  # (B,T): each position keeps its own pair
    assert memo["pairs"] == 5 and torch.equal(memo["kept"][..., 0], j.float())
    assert torch.equal(memo["after"], memo["kept"] + 1)  # the state one step after the kept one

    def decode(h):  # the answer of state h_k is token k
        return F.one_hot(h[..., 0].long(), 8).float()  # (B,T,V)

    with torch.no_grad():
        rule.head.bias.fill_(4.0 / rule.cfg.speed)  # the head says "stop" (logit +4) everywhere
    right = rule.loss(memo, states[-1], decode, targets=j + 1)
    wrong = rule.loss(memo, states[-1], decode, targets=j)  # right at h_j, not after it
    assert right.item() < 0.05 and wrong.item() > 3.0


def test_each_position_keeps_its_own_step_and_every_step_is_kept_somewhere():
    """The reservoir runs per position: over a batch every frozen step is labelled, each about equally often."""
    from plugins.halting import LearnedHalting

    rule = LearnedHalting(LearnedHalting.Config(label="next_correct", explore=1.0, k_min=0), d_model=4)
    rule.train()
    memo: dict = {}
    torch.manual_seed(0)
    for k in range(9):
        rule.update(None, None, memo, k, h=torch.full((64, 64, 4), float(k)))
    counts = torch.bincount(memo["kept_k"].flatten(), minlength=8)  # 8 pairs offered
    assert counts.min() > 0.8 * 64 * 64 / 8 and counts.max() < 1.2 * 64 * 64 / 8


def test_the_correct_label_without_targets_is_one_clear_error(tiny_recipe):
    from parallax.errors import TrainingError

    model, data, _ = learned_model(tiny_recipe, "model.halting.explore=1.0", "model.halting.label=correct")
    model.train()
    with pytest.raises(TrainingError, match="label: correct needs the training targets"):
        model(data.batch(1)["inputs"], k_max=4)


def test_the_trainer_hands_the_model_its_targets(tiny_recipe, monkeypatch):
    from parallax.model import CWSModel as Model

    seen = []
    forward = Model.forward

    def spy(self, inputs, *args, **kwargs):
        seen.append(kwargs.get("targets"))
        return forward(self, inputs, *args, **kwargs)

    monkeypatch.setattr(Model, "forward", spy)
    assert main(["run", str(tiny_recipe), *LEARNED, "train.max_steps=1", "train.eval_every=100"]) == 0
    recipe = load_recipe(str(tiny_recipe), LEARNED)
    targets = build_data(recipe, get_registry()).batch(1)["targets"]  # step 1 trains on batch 1
    assert seen[0] is not None and torch.equal(seen[0], targets)


def test_halting_is_per_position(tiny_recipe):
    model, data, _ = learned_model(tiny_recipe, "model.k_max=8")
    model.eval()
    with torch.no_grad():  # a head that halts where one direction of the state is positive
        model.halting.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
        model.halting.head.bias.zero_()
    inputs = data.batch(1)["inputs"]
    with torch.no_grad():
        together = model(inputs)
        alone = model(inputs[:1])
    k = together.k
    assert (k < 8).any() and (k == 8).any() and (k.min(1).values < k.max(1).values).any()  # differs within rows
    assert torch.equal(together.k[:1], alone.k)  # a sequence's K does not depend on its batch
    # work counts exactly the steps each position took
    assert together.stats["work"] == int(k.sum())


def test_at_k_min_0_a_position_may_take_the_live_step_alone(tiny_recipe):
    """k_min 0: the head is asked on the initial state too; where it says "stop" no frozen step runs."""
    model, data, _ = learned_model(tiny_recipe, "model.k_max=8", "model.halting.k_min=0")
    model.eval()
    inputs = data.batch(1)["inputs"]
    with torch.no_grad():
        model.halting.head.bias.fill_(4.0)  # "stop" everywhere, from the start
        out = model(inputs)
    assert out.k.eq(1).all() and out.stats["work"] == inputs.numel()  # K = live_steps: the live step alone
    with torch.no_grad():  # halting where one direction of the state is positive: some at 0 steps, some later
        model.halting.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
        model.halting.head.bias.zero_()
        out = model(inputs)
    assert (out.k == 1).any() and (out.k > 1).any() and out.stats["work"] == int(out.k.sum())
    model.halting.cfg = model.halting.cfg.model_copy(update={"k_min": 1})  # the same head at k_min 1
    with torch.no_grad():
        assert model(inputs).k.min() >= 2


def test_trains_through_the_trainer_and_round_trips_a_checkpoint(tiny_recipe, tmp_path):
    assert main(["run", str(tiny_recipe), *LEARNED, "model.halting.explore=0.5", "train.max_steps=4",
                 "train.save_every=4", "train.eval_every=100"]) == 0
    fresh, data, _ = learned_model(tiny_recipe, "model.halting.explore=0.5")
    start = fresh.halting.head.weight.detach().clone()
    path = ckpt.latest(tmp_path / "run")
    ckpt.load_model_state(path, fresh)
    assert not torch.equal(fresh.halting.head.weight, start)  # the trainer's steps moved the head
    again, _, _ = learned_model(tiny_recipe, "model.halting.explore=0.5")
    ckpt.load_model_state(path, again)
    fresh.eval(), again.eval()
    inputs = data.batch(1)["inputs"]
    with torch.no_grad():
        a, b = fresh(inputs), again(inputs)
    assert torch.equal(a.k, b.k) and torch.equal(a.logits, b.logits)


def test_a_settle_with_no_frozen_step_still_gives_the_head_a_zero_gradient(tiny_recipe):
    model, data, _ = learned_model(tiny_recipe)
    model.train()
    out = model(data.batch(1)["inputs"], k_max=1)  # the live step only: nothing to label
    assert out.stats["aux_loss"].item() == 0
    out.stats["aux_loss"].backward()  # DDP needs every parameter to take part in every step
    assert model.halting.head.weight.grad is not None and model.halting.head.weight.grad.abs().sum() == 0


def test_generation_halts_each_position_as_the_parallel_settle_does(tiny_recipe):
    model, data, _ = learned_model(tiny_recipe, "model.k_max=8")
    model.eval()
    with torch.no_grad():
        model.halting.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
        model.halting.head.bias.zero_()
        inputs = data.batch(1)["inputs"][:2]
        want = model(inputs)
        cache, ks, logits = None, [], []
        for t in range(inputs.shape[1]):
            out, k, cache = model.decode_step(inputs[:, t : t + 1], cache)
            ks.append(k)
            logits.append(out)
    assert torch.equal(torch.stack(ks, 1), want.k) and (want.k < 8).any()
    torch.testing.assert_close(torch.stack(logits, 1), want.logits, rtol=1e-4, atol=1e-5)


def test_step_heads_let_the_halt_depend_on_the_step_taken():
    """With ``step_heads`` each step k adds its own correction to the shared head, so one state can be
    "stop" after one frozen step and "go on" after another; the corrections start at zero (deep start)
    and the last one serves every later step. The head's loss reaches the kept step's correction only."""
    from plugins.halting import LearnedHalting

    rule = LearnedHalting(LearnedHalting.Config(label="next_correct", explore=1.0, k_min=0, step_heads=3), d_model=4)
    h = torch.randn(2, 3, 4)
    assert all(torch.allclose(rule.logit(h, k), torch.full((2, 3), -4.0)) for k in range(6))
    with torch.no_grad():
        rule.step_bias[1] = 1.0  # step 1 says "stop"
        rule.step_bias[2] = -1.0  # step 2 and later: "go on"
    z = [rule.logit(h, k) for k in range(5)]
    assert (z[1] > z[0]).all() and (z[2] < z[0]).all() and torch.equal(z[4], z[2])

    rule.train()
    memo: dict = {}
    torch.manual_seed(1)
    for k in range(3):
        rule.update(None, None, memo, k, h=torch.full((2, 3, 4), float(k)))
    j = memo["kept_k"]  # (B,T)
    assert torch.equal(memo["kept"][..., 0], j.float())  # the step index goes with the kept state
    loss = rule.loss(memo, memo["after"], lambda s: F.one_hot(s[..., 0].long(), 8).float(), targets=j + 1)
    loss.backward()
    touched = set(rule.step_bias.grad.nonzero().flatten().tolist())
    assert touched == set(j.flatten().tolist())  # each kept step's correction, and no other


def test_hindsight_takes_the_live_step_from_the_state_before_the_first_right_answer():
    """``explore_live: hindsight``: the targets judge the answer after each frozen step, and an explored
    position marks the state before its first right answer; one never right marks nothing (it takes
    the whole budget), and positions without a target do not explore."""
    from plugins.halting import LearnedHalting

    rule = LearnedHalting(LearnedHalting.Config(label="next_correct", explore=1.0, k_min=0, step_heads=4,
                                                explore_live="hindsight"), d_model=4)
    rule.train()
    assert rule.marks_previous

    def decode(h):  # the answer of state h_k is token k % 4: right again 4 steps later
        return F.one_hot(h[..., 0].long() % 4, 8).float()  # (B,T,V)

    targets = torch.tensor([[2, 7, -100]]).expand(2, 3)  # right after step 2 (and 6), never, nothing scored
    memo: dict = {"decode": decode, "targets": targets}
    marked_at = torch.full((2, 3), -1)
    for k in range(8):
        rule.update(None, None, memo, k, h=torch.full((2, 3, 4), float(k)))
        keep = memo.pop("keep_previous", None)
        if keep is not None:
            marked_at[keep] = k - 1  # the latest mark wins, as in the loop
    assert marked_at[:, 0].eq(1).all()  # the state before the first right answer, not the later one
    assert marked_at[:, 1].eq(-1).all() and memo["explore"][:, 1].all()  # never right: the whole budget
    assert marked_at[:, 2].eq(-1).all() and not memo["explore"][:, 2].any()
    assert not rule.eval().marks_previous  # inference halts as the head says


def test_hindsight_without_targets_per_position_is_one_clear_error():
    from parallax.errors import TrainingError
    from plugins.halting import LearnedHalting

    rule = LearnedHalting(LearnedHalting.Config(label="next_correct", explore_live="hindsight"), d_model=4)
    rule.train()
    with pytest.raises(TrainingError, match="explore_live: hindsight"):
        rule.update(None, None, {}, 1, h=torch.zeros(2, 3, 4))


def test_under_hindsight_positions_without_a_target_are_labelled_without_exploring():
    """Only positions with a target explore under hindsight; those without one are labelled "stop" all the
    same (their label does not depend on the trajectory), so the head learns to halt them at once."""
    from plugins.halting import LearnedHalting

    rule = LearnedHalting(LearnedHalting.Config(label="next_correct", explore=1.0, k_min=0,
                                                explore_live="hindsight"), d_model=4)
    rule.train()
    targets = torch.tensor([[3, -100, -100]]).expand(2, 3)
    memo: dict = {"decode": lambda h: F.one_hot(h[..., 0].long(), 8).float(), "targets": targets}
    for k in range(4):
        rule.update(None, None, memo, k, h=torch.full((2, 3, 4), float(k)))
    assert memo["explore"][:, 0].all() and not memo["explore"][:, 1:].any()
    with torch.no_grad():
        rule.head.bias.fill_(4.0 / rule.cfg.speed)  # "stop" everywhere: right for the unscored ones
    unscored_only = rule.loss(memo, memo["after"], memo["decode"], targets=torch.full((2, 3), -100))
    assert unscored_only.item() < 0.05  # they are labelled (an empty selection would give nan), and "stop"


def test_reads_start_with_k_min_above_zero_reads_the_initial_state_without_halting_there():
    from plugins.halting import LearnedHalting

    rule = LearnedHalting(LearnedHalting.Config(k_min=2, step_heads=4, reads_start=True), d_model=4)
    assert rule.halts_before_steps  # asked at k = 0 to read the initial state
    with torch.no_grad():
        rule.head.bias.fill_(4.0 / rule.cfg.speed)  # "stop" everywhere
    rule.eval()
    memo: dict = {}
    h0 = torch.randn(2, 3, 4)
    assert not rule.update(None, None, memo, 0, h=h0).any()  # k < k_min: no halt
    assert torch.equal(memo["start"], h0)
    assert rule.update(None, None, memo, 2, h=torch.randn(2, 3, 4)).all()


def test_reads_start_without_step_heads_is_one_clear_error(tiny_recipe):
    from parallax.errors import ConfigError

    with pytest.raises(ConfigError, match="reads_start"):
        learned_model(tiny_recipe, "model.halting.reads_start=true")


def test_eval_threshold_sets_the_halt_out_of_training_only():
    """``eval_threshold`` replaces ``threshold`` in evaluation and generation; training keeps ``threshold``."""
    from plugins.halting import LearnedHalting

    rule = LearnedHalting(LearnedHalting.Config(threshold=0.8, eval_threshold=0.5, explore=0.0), d_model=4)
    h = torch.randn(2, 3, 4)
    with torch.no_grad():
        rule.head.bias.fill_(math.log(0.6 / 0.4) / rule.cfg.speed)  # p = 0.6 everywhere: between the two
    assert rule.eval().update(None, None, {}, 1, h=h).all()  # 0.6 >= 0.5: halts at evaluation
    assert not rule.train().update(None, None, {}, 1, h=h).any()  # 0.6 < 0.8: runs on in training
    plain = LearnedHalting(LearnedHalting.Config(threshold=0.8), d_model=4)
    plain.load_state_dict(rule.state_dict())
    assert not plain.eval().update(None, None, {}, 1, h=h).any()  # unset: evaluation uses threshold


def test_the_halt_is_computed_at_the_positions_still_settling_alone():
    """Given ``active``, the rule decides the positions still settling exactly as it does on the whole
    block, and never reads the state elsewhere (there the loop has halted them already)."""
    from plugins.halting import LearnedHalting

    torch.manual_seed(0)
    rule = LearnedHalting(LearnedHalting.Config(k_min=0, step_heads=3, reads_start=True), d_model=4).eval()
    with torch.no_grad():
        for p in rule.parameters():
            p.normal_()
    h0, h = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    active = torch.tensor([[True, False, True, False, False], [False, False, True, True, False]])
    whole, part = {}, {}
    rule.update(None, None, whole, 0, h=h0)
    rule.update(None, None, part, 0, h=h0, active=torch.ones(2, 5, dtype=torch.bool))
    want = rule.update(None, None, whole, 2, h=h)
    poisoned = torch.where(active[..., None], h, torch.full_like(h, float("nan")))  # NaN where halted
    logit, shapes = rule.logit, []
    rule.logit = lambda x, *a: shapes.append(x.shape[:-1]) or logit(x, *a)
    got = rule.update(None, None, part, 2, h=poisoned, active=active)
    assert shapes == [(1, int(active.sum()))]  # the head ran on the 5 positions still settling alone
    assert want[active].any() and not want[active].all()  # both answers occur where it matters
    assert torch.equal(got[active], want[active])
    assert not got[~active].any()


def test_the_loop_tells_a_rule_that_reads_active_which_positions_still_settle(tiny_recipe):
    """``reads_active`` rules receive the loop's ``active`` mask; the K each position takes is the same
    as where the rule decides on the whole block."""
    model, data, _ = learned_model(tiny_recipe, "model.halting.k_min=0")
    rule_class = type(model.halting)
    model.eval()
    with torch.no_grad():
        model.halting.head.weight.normal_(0, 1.0)  # halts that differ from position to position
        model.halting.head.bias.zero_()
    seen = []
    update = model.halting.update

    def spy(*args, **kwargs):
        seen.append(kwargs.get("active"))
        return update(*args, **kwargs)

    x = data.batch(0)["inputs"]
    with torch.no_grad():
        model.halting.update = spy
        k_part = model(x).k
        rule_class.reads_active = False
        try:
            k_whole = model(x).k
        finally:
            rule_class.reads_active = True
    assert seen and seen[0] is not None and seen[-1] is None
    assert len(k_part.unique()) > 1 and torch.equal(k_part, k_whole)


def test_the_compiled_loop_asks_about_the_whole_block():
    """The compiled frozen phase syncs with the host every few steps; a ``reads_active`` rule there is
    not given the mask (finding its positions would sync every step) and decides the whole block."""
    from parallax.kloop import _halt
    from parallax.protocols import WorkspaceState
    from plugins.halting import LearnedHalting

    class Spy(LearnedHalting):
        def update(self, raw, prev_raw, memo, k, h=None, active=None):
            memo.setdefault("given", []).append(active)
            return super().update(raw, prev_raw, memo, k, h=h, active=active)

    rule = Spy(LearnedHalting.Config(k_min=0), d_model=4).eval()
    state = WorkspaceState(torch.randn(2, 3, 4), torch.ones(2, 3, 1, 1))
    active, memo = torch.ones(2, 3, dtype=torch.bool), {}
    _halt(rule, None, None, memo, 1, state, active)
    _halt(rule, None, None, memo, 1, state, active, sparse=False)
    assert memo["given"][0] is active and memo["given"][1] is None
