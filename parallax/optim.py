"""Muon for the hidden weight matrices, AdamW for everything else (seed 004: "Parallax with the Muon
optimizer"; torch.optim.Muon's documentation: Muon is for 2-D hidden-layer weights, while
embeddings, the output head, norms and biases belong with AdamW).

``optimizer: {type: muon, lr: 0.02, momentum: 0.95, adamw: {lr: 0.003, betas: [0.9, 0.95]}}``: the
keys beside ``adamw`` go to ``torch.optim.Muon``; ``adamw`` holds ``torch.optim.AdamW``'s options for
the other parameters (lr defaults to the Muon lr, weight decay to 0, and it applies to tables only).

Which parameters are hidden weight matrices: the ``weight`` of every ``nn.Linear``, except a weight
that is also an ``nn.Embedding``'s table (a tied head) and the output head itself (a Linear
registered under the name ``head`` or ``lm_head``). Everything else, 2-D tables such as embeddings
or a learned memory bank included, goes to AdamW.
"""
from __future__ import annotations

import torch
from torch import nn

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
