"""Halting rules: ``momentum`` (the seed's raw-momentum saturation readout), ``learned`` (a halting head
trained with the model to predict that more steps will not change the answer, or that the answer is
right) and ``fixed`` (always k_max).

Seed 001 §04: "Equilibrium is detected via a raw-momentum readout - not by chasing the difference
between successive hidden states to zero." The movement m_k = RMS(raw_k - raw_{k-1}) over heads
and slots is the momentum; a position halts once m_k stops changing (|m_k - m_{k-1}| <=
rel_tol * m_{k-1}: the movement has saturated, whether at a fixed point or on a steady orbit), or
once m_k < abs_tol. Every test is elementwise over positions, so positions halt independently.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

import parallax


class MomentumHalting(parallax.HaltingRule):
    class Config(parallax.Spec):
        type: str = "momentum"
        rel_tol: float = Field(0.05, ge=0, description="halt when |m_k - m_{k-1}| <= rel_tol * m_{k-1}")
        abs_tol: float = Field(1e-3, ge=0, description="halt when the movement m_k < abs_tol")
        k_min: int = Field(2, ge=1, description="no position halts before this many steps")

    def update(self, raw, prev_raw, memo, k):
        if prev_raw is None:
            return torch.zeros(raw.shape[:2], dtype=torch.bool, device=raw.device)
        m = parallax.movement(raw, prev_raw)  # (B,T)
        prev_m = memo.get("m")
        memo["m"] = m
        halt = m < self.cfg.abs_tol
        if prev_m is not None:
            halt = halt | ((m - prev_m).abs() <= self.cfg.rel_tol * prev_m)
        return halt & (k >= self.cfg.k_min)


class LearnedHalting(parallax.HaltingRule, nn.Module):
    """A halting head on the state, trained with the model to predict "stopping now gives the answer that
    the whole budget gives"; a position halts once the head is confident of it.

    The head reads ``p_k = sigmoid(w · RMSNorm(h_k) + b)`` ``(B,T)`` after each frozen step k and halts a
    position when ``p_k >= threshold`` (and ``k >= k_min``), in training and in inference alike.

    Why this target, and not ACT/PonderNet or HRM's Q-halting: the K loop runs its frozen steps under
    ``no_grad`` and keeps no state from them, so training memory does not grow with K. PonderNet's loss,
    ``sum_k p(halt at k) * L_k + beta * KL(p || geometric)``, needs the task loss L_k of every step with a
    graph through every halting probability: K decoder passes and K states kept, the memory the loop
    exists to avoid (ACT's ponder cost needs the same graph through the halting units). HRM's Q-halting
    bootstraps its "continue" value from the next segment and labels "halt" with the correctness of the
    answer, which needs the targets inside the model and a pass per segment. Here the label comes from
    the frozen trajectory itself, as CALM labels its early exits by consistency with the full model
    (Schuster et al. 2022, "Confident Adaptive Language Modeling"): each position keeps one step j of each
    training settle (reservoir-sampled per position, so each frozen step is equally likely, without
    knowing the budget, and every step is labelled somewhere in the batch), and
    ``y = [argmax decode(h_j) == argmax decode(h_frozen)]`` per position, with ``h_frozen`` the state
    after all frozen steps. The loss is the BCE of the head at ``h_j`` against y. Memory stays O(1) in
    K (one kept state ``(B,T,d)``); the cost is two decoder passes under ``no_grad`` per training batch.
    The head's input is detached, so its loss trains the head only, never the workspace.

    Positions whose target is ignored (-100 in the trainer's targets) are labelled "stop": there is no
    answer there for more steps to change, and the untrained decoder's argmax at them moves at random.

    ``label: correct`` is HRM's halting target instead (Wang et al. 2025, "Hierarchical Reasoning
    Model": the "halt" value is the correctness of the current answer): ``y = [argmax decode(h_j) ==
    target]``, from the trainer's targets, with no bootstrapped "continue" value. A position the model
    cannot yet answer is then labelled "continue" and runs deep, where the consistency label calls it
    "stop" because more steps do not change a wrong answer either (docs/halting.md).

    ``label: next_correct`` asks the question a halt actually poses: after a halt at step j the loop
    takes the live step, so the label is whether the answer one step later is the target,
    ``y = [argmax decode(h_{j+1}) == target]``, with ``(h_j, h_{j+1})`` a reservoir-sampled pair of
    successive frozen states (the live step is the same function, with a graph). Under ``correct`` a
    position halts once its answer is right and the live step must then keep it, which trains the step
    to be idempotent on answers; under ``next_correct`` the live step is the one that makes it right.

    Censoring: a position that halts early never shows what later steps would have said, and labels
    from its truncated trajectory would call any early stop "consistent", reinforcing it. So in training
    a fraction ``explore`` of positions ignores the head and runs the batch's whole budget, and only
    those positions label the head (the exploration of HRM's halting, used here for unbiased labels).

    Chains of lookups (docs/halting.md): ``step_heads`` gives each step its own correction of the logit,
    so that whether to halt can depend on how many steps were taken; ``reads_start`` lets each step's
    correction read the initial state (what was asked); ``explore_live: hindsight`` starts an explored
    position's live step from the state before its first right answer, judged with the training
    targets after every frozen step, so that the step is trained at the depth it needs rather than
    wherever the position stopped.

    Deep start: the head's weight starts at 0 and its bias at ``init_bias`` (-4: p = 0.018 everywhere),
    so at first no position halts and every one runs to k_max; the head learns where stopping is safe.

    ``eval_threshold``: the bar out of training. In training a halt also decides where a position's live
    step is trained, so the bar there stays high; at evaluation a missed halt costs the answer, and on
    multihop a lower bar answered more (docs/halting.md, "Threshold at evaluation").
    """

    reads_state = True
    reads_active = True

    class Config(parallax.Spec):
        type: str = "learned"
        threshold: float = Field(0.8, gt=0, lt=1, description="halt when the head's probability of its "
                                 "label (see label) reaches this")
        eval_threshold: float | None = Field(
            None, gt=0, lt=1, description="the threshold out of training (evaluation, generation, bench); "
            "default: threshold. In training a halt also decides where the live step is trained, and a "
            "lower threshold there let wrong-depth halts train the step (docs/halting.md)")
        init_bias: float = Field(-4.0, description="initial bias of the halting logit (negative: a deep start)")
        k_min: int = Field(1, ge=0, description="no position halts before this many frozen steps (0: the "
                           "head is asked on the initial state too, so a position may take the live step alone)")
        explore: float = Field(0.25, ge=0, le=1, description="fraction of positions that, in training, run the "
                               "whole budget and label the head")
        weight: float = Field(1.0, ge=0, description="weight of the head's loss beside the task loss")
        speed: float = Field(10.0, gt=0, description="the halting logit is speed * (w·x + b): under Adam, the "
                             "head's learning rate times speed")
        step_heads: int = Field(0, ge=0, description="0: one head for every step; N: besides it, a correction of "
                                "its own for each of the frozen steps k = 0..N-1 (the last one serves every later k), "
                                "so that the head can tell how many steps were taken")
        reads_start: bool = Field(False, description="each step's correction also reads the position's initial "
                                  "state (its observation, under init_h: obs): what was asked, beside how far the "
                                  "steps got; needs step_heads")
        explore_live: Literal["budget", "hindsight"] = Field(
            "budget", description="where an explored position takes its live step: after the whole budget; or "
            "hindsight: from the state before its first frozen step whose answer is the target (none: the whole "
            "budget), judged with the training targets; only positions with a target explore")
        label: Literal["consistent", "correct", "next_correct"] = Field(
            "consistent", description="what the head learns to predict at a kept step: consistent = its answer "
            "is the whole budget's (CALM); correct = its answer is the target (HRM); next_correct = the answer "
            "one step later, the live step's after a halt there, is the target")

        @model_validator(mode="after")
        def _start_needs_steps(self):
            if self.reads_start and not self.step_heads:
                raise ValueError("reads_start reads the initial state through each step's correction: "
                                 "set step_heads (e.g. k_max)")
            return self

    def __init__(self, cfg: Config, d_model: int):
        nn.Module.__init__(self)
        parallax.HaltingRule.__init__(self, cfg)
        self.head = nn.Linear(d_model, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, cfg.init_bias / cfg.speed)  # the logit starts at init_bias
        if cfg.step_heads:  # per-step corrections, zero at the start so the deep start holds at every k
            self.step_weight = nn.Parameter(torch.zeros(cfg.step_heads, d_model))  # (N,d)
            self.step_bias = nn.Parameter(torch.zeros(cfg.step_heads))  # (N,)
        if cfg.reads_start:
            self.start_weight = nn.Parameter(torch.zeros(cfg.step_heads, d_model))  # (N,d) on the initial state

    @property
    def halts_before_steps(self) -> bool:
        """Asked on the initial state too: at k_min 0 to halt there, under reads_start to read it."""
        return self.cfg.k_min == 0 or self.cfg.reads_start

    @property
    def marks_previous(self) -> bool:
        """hindsight judges the state before each step by that step's answer (``kloop._LiveStart``)."""
        return self.training and self.cfg.explore_live == "hindsight"

    def logit(self, h: torch.Tensor, k: int | torch.Tensor = 0, start: torch.Tensor | None = None) -> torch.Tensor:
        """The halting logit ``(B,T)`` of states ``h (B,T,d)`` after ``k`` frozen steps (``start (B,T,d)``: the
        initial states, read under ``reads_start``).

        With ``step_heads``, step k adds its own correction ``w_k · x + b_k`` to the shared head's: whether
        to halt can depend on how many steps were taken (a 2-hop query is ready after one frozen step, a
        4-hop one after three), which the state need not record. PonderNet's halting probability is
        likewise one per step n.

        Why ``speed``: Adam moves each parameter by about lr per step whatever its gradient's scale, so
        a logit that must travel from init_bias -4 to the threshold's +1.4 took ~1,800 steps at lr 3e-3
        (recall, seed 0: the bias had reached -2.9 after 500 steps and no position halted). Scaling the
        logit scales the head's effective learning rate, and only the head's."""
        x = F.rms_norm(h, h.shape[-1:])  # (B,T,d)
        z = self.head(x).squeeze(-1)  # (B,T)
        if self.cfg.step_heads:  # k: one step for the block (the loop), or one per position (kept states)
            last = self.cfg.step_heads - 1
            j = min(k, last) if isinstance(k, int) else k.clamp(max=last)
            z = z + (x * self.step_weight[j]).sum(-1) + self.step_bias[j]  # (B,T)
            if self.cfg.reads_start:  # what was asked (a 3-hop query) against how far the steps got (k)
                z = z + (F.rms_norm(start, start.shape[-1:]) * self.start_weight[j]).sum(-1)  # (B,T)
        return self.cfg.speed * z

    def update(self, raw, prev_raw, memo, k, h=None, active=None):
        t = self.cfg.threshold if self.training or self.cfg.eval_threshold is None else self.cfg.eval_threshold
        if k == 0 and self.cfg.reads_start:
            memo["start"] = h.clone()  # (B,T,d) the initial state; the loop overwrites h in place
        halt = self._halts(h, k, memo.get("start"), active, math.log(t / (1 - t)))  # p >= t
        if not self.training:
            return halt
        if "explore" not in memo:
            memo["explore"] = torch.rand(h.shape[:2], device=h.device) < self.cfg.explore  # (B,T)
            if self.cfg.explore_live == "hindsight":
                targets = memo.get("targets")
                if targets is None or targets.shape != h.shape[:2]:
                    raise parallax.errors.TrainingError(
                        "model.halting.explore_live: hindsight judges each position's answer against its "
                        "target, and this model gave none per position; use explore_live: budget")
                memo["explore"] &= targets != -100  # nothing to judge elsewhere: those halt as the head says
        if self.cfg.explore_live == "hindsight" and k >= 1 and k - 1 >= self.cfg.k_min:
            with torch.no_grad():  # is the answer after step k the target? then step k - 1 was the one to halt at
                right = memo["decode"](h).argmax(-1) == memo["targets"]  # (B,T)
            found = memo.get("found", torch.zeros_like(right))
            memo["keep_previous"] = memo["explore"] & right & ~found  # the first right answer only
            memo["found"] = found | right
        if self.cfg.label == "next_correct":  # keep a pair of successive states (h_{k-1}, h_k)
            now = h.clone()  # the loop overwrites h in place
            if "prev" in memo:
                memo["pairs"] = memo.get("pairs", 0) + 1
                _offer(memo, memo["pairs"], memo["prev"], now, k - 1)
            memo["prev"] = now
            return halt & ~memo["explore"]
        seen = k + 1 if self.halts_before_steps else k  # states offered so far, the initial one included at k_min 0
        _offer(memo, seen, h.clone(), None, k)  # the loop overwrites h in place
        return halt & ~memo["explore"]

    def _halts(self, h: torch.Tensor, k: int, start: torch.Tensor | None, active: torch.Tensor | None,
               bar: float) -> torch.Tensor:
        """Where the logit reaches ``bar`` ``(B,T)``, computed at the ``active`` positions alone: once most
        positions have halted, the head over the whole block would cost every step what a full step's
        projections cost, and the positions still settling are a few (docs/halting.md, "The protocol")."""
        B, T, d = h.shape
        if k < self.cfg.k_min:
            return torch.zeros(B, T, dtype=torch.bool, device=h.device)
        if active is None:
            return self.logit(h, k, start) >= bar
        idx = active.reshape(-1).nonzero().squeeze(1)  # (N,) flat positions still settling
        take = lambda t: t.reshape(B * T, d).index_select(0, idx)[None]  # noqa: E731  (1,N,d)
        z = self.logit(take(h), k, take(start) if start is not None else None)[0]  # (N,)
        halt = torch.zeros(B * T, dtype=torch.bool, device=h.device)
        return halt.index_copy_(0, idx, z >= bar).view(B, T)

    def loss(self, memo, h_frozen, decode, targets=None):
        labelled = memo.get("explore")
        if labelled is not None and self.cfg.explore_live == "hindsight" and targets is not None \
                and targets.shape == labelled.shape:
            # under hindsight only positions with a target explore; those without one need no exploring to
            # be labelled, since their label is "stop" whatever their trajectory (below)
            labelled = labelled | (targets == -100)
        if "kept" not in memo or not labelled.any():  # no frozen step, or no position to label
            # a zero that still reaches the head, so that every parameter has a gradient each step (DDP)
            return sum(p.sum() for p in self.parameters()) * 0.0
        if self.cfg.label != "consistent" and targets is None:
            raise parallax.errors.TrainingError(f"model.halting.label: {self.cfg.label} needs the training targets, "
                                                "and this model was not given them; use label: consistent")
        shape = memo["explore"].shape  # (B,T)
        with torch.no_grad():
            # next_correct judges the answer one step later: the step the live one would take after a halt
            answer = decode(memo["after" if self.cfg.label == "next_correct" else "kept"]).argmax(-1)  # (B,T) or (B,)
            reference = targets if self.cfg.label != "consistent" else decode(h_frozen).argmax(-1)
            stop = answer == reference
            stop = stop.expand(shape) if stop.dim() == 2 else stop[:, None].expand(shape)
            if targets is not None and targets.shape == shape:
                # a position whose target is ignored has no answer that more steps could change
                stop = stop | (targets == -100)
        z = self.logit(memo["kept"], memo["kept_k"], memo.get("start"))  # (B,T) with a graph through the head only
        return self.cfg.weight * F.binary_cross_entropy_with_logits(z[labelled], stop[labelled].to(z.dtype))


def _offer(memo: dict, n: int, h: torch.Tensor, after: torch.Tensor | None, k: int) -> None:
    """Reservoir sampling per position: the n-th state offered (with the state after it, for next_correct)
    replaces a position's kept one with probability 1/n, so each position keeps every offered step with
    equal chance, and every step is kept somewhere in the batch (one step per batch left most unlabelled)."""
    B, T = h.shape[:2]
    if "kept" not in memo:
        memo["kept"], memo["after"] = h, after
        memo["kept_k"] = torch.full((B, T), k, dtype=torch.long, device=h.device)
        return
    take = torch.rand(B, T, device=h.device) * n < 1  # (B,T) probability 1/n
    memo["kept"] = torch.where(take[..., None], h, memo["kept"])
    if after is not None:
        memo["after"] = torch.where(take[..., None], after, memo["after"])
    memo["kept_k"] = torch.where(take, k, memo["kept_k"])


class FixedHalting(parallax.HaltingRule):
    class Config(parallax.Spec):
        type: str = "fixed"

    def update(self, raw, prev_raw, memo, k):
        return torch.zeros(raw.shape[:2], dtype=torch.bool, device=raw.device)


@parallax.hookimpl
def register_halting_rules(register):
    register("momentum", MomentumHalting)
    register("learned", LearnedHalting)
    register("fixed", FixedHalting)
