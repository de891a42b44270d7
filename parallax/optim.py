"""Optimizers and the learning-rate schedule of a recipe's ``train`` block.

``make_optimizer`` builds any ``torch.optim`` optimizer by name; ``lr_lambda`` is the warm-up then
cosine schedule. ``muon`` is Muon for the hidden weight matrices and AdamW for everything else
(seed 004: "Parallax with the Muon optimizer"; torch.optim.Muon's documentation: Muon is for 2-D
hidden-layer weights, while embeddings, the output head, norms and biases belong with AdamW).

``optimizer: {type: muon, lr: 0.02, momentum: 0.95, adamw: {lr: 0.003, betas: [0.9, 0.95]}}``: the
keys beside ``adamw`` go to ``torch.optim.Muon``; ``adamw`` holds ``torch.optim.AdamW``'s options for
the other parameters (lr defaults to the Muon lr, weight decay to 0, and it applies to tables only).

Which parameters are hidden weight matrices: the ``weight`` of every ``nn.Linear``, except a weight
that is also an ``nn.Embedding``'s table (a tied head) and the output head itself (a Linear
registered under the name ``head`` or ``lm_head``). Everything else, 2-D tables such as embeddings
or a learned memory bank included, goes to AdamW.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .schema import OptimizerConfig, TrainConfig

HEAD_NAMES = ("head", "lm_head")


def muon_split(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(named Muon parameters, named AdamW parameters) of the trainable parameters of ``model``."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    hidden = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] not in HEAD_NAMES and id(m.weight) not in tables:
            hidden.add(id(m.weight))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [(n, p) for n, p in named if id(p) in hidden], [(n, p) for n, p in named if id(p) not in hidden]


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over two: ``torch.optim.Muon`` on the hidden matrices, ``torch.optim.AdamW`` on the rest.

    Its ``param_groups`` are the inner optimizers' own group dicts, so an LR scheduler, gradient
    clipping and a GradScaler act on both. Each group carries ``optimizer: muon|adamw``.
    """

    def __init__(self, model: nn.Module, lr: float, weight_decay: float, muon_options: dict, adamw_options: dict):
        muon_named, adamw_named = muon_split(model)
        adamw = dict(adamw_options)
        adamw.setdefault("lr", lr)
        adamw_decay = adamw.pop("weight_decay", 0.0)
        tables = [p for _, p in adamw_named if p.ndim >= 2]
        rest = [p for _, p in adamw_named if p.ndim < 2]
        self.muon = torch.optim.Muon([p for _, p in muon_named], lr=lr, weight_decay=weight_decay, **muon_options) \
            if muon_named else None
        groups = [{"params": tables, "weight_decay": adamw_decay}, {"params": rest, "weight_decay": 0.0}]
        self.adamw = torch.optim.AdamW([g for g in groups if g["params"]], **adamw)
        for g in self.muon.param_groups if self.muon else []:
            g["optimizer"] = "muon"
        for g in self.adamw.param_groups:
            g["optimizer"] = "adamw"
        inner = [o for o in (self.muon, self.adamw) if o is not None]
        super().__init__([g for o in inner for g in o.param_groups], {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for o in (self.muon, self.adamw):
            if o is not None:
                o.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict() if self.muon else None, "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"muon", "adamw"} or (state["muon"] is None) != (self.muon is None):
            raise ValueError("the saved optimizer state is not a Muon + AdamW state")
        if self.muon is not None:
            self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
        # loading gives the inner optimizers new group dicts; share them again, so that a scheduler
        # stepping this optimizer's groups reaches the ones the inner optimizers read
        self.param_groups = [g for o in (self.muon, self.adamw) if o is not None for g in o.param_groups]


def make_optimizer(model: nn.Module, opt: OptimizerConfig) -> torch.optim.Optimizer:
    """Any torch.optim optimizer by name. Weight decay applies to matrices only (not norms, biases).
    ``muon`` is Muon on the hidden matrices with AdamW on the rest."""
    name = {n.lower(): n for n in dir(torch.optim)}[opt.type.lower()]
    if name == "Muon":  # Muon takes 2-D hidden matrices only; AdamW gets the rest
        extra = dict(opt.model_extra or {})
        adamw = extra.pop("adamw", None) or {}
        return MuonAdamW(model, opt.lr, opt.weight_decay, extra, adamw)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return getattr(torch.optim, name)([g for g in groups if g["params"]], lr=opt.lr, **(opt.model_extra or {}))


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up over ``schedule.warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``max_steps``."""
    warm, floor, total = cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio, cfg.max_steps

    def f(step: int) -> float:  # step counts completed optimizer steps
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
