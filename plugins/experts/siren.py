"""SIREN expert: a periodic prior over ``h_eff`` (sine-activated layers; Sitzmann et al. 2020).

h-clocked and stateless. Weights use SIREN's initialisation: the first layer uniform in
±1/fan_in scaled by omega_0, later layers uniform in ±sqrt(6/fan_in)/omega_0.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

import parallax


class Siren(parallax.Expert):
    clock = "h"
    packs = True  # position-wise: packed queries need nothing but h_eff

    class Config(parallax.Spec):
        type: str = "siren"
        slots: int = Field(1, ge=1, description="workspace slots this expert proposes")
        hidden: int = Field(64, ge=1, description="hidden width of the sine network")
        layers: int = Field(2, ge=1, description="sine layers")
        omega_0: float = Field(30.0, gt=0, description="frequency of the first layer")

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        self.slots, self.omega = cfg.slots, cfg.omega_0
        dims = [d_model] + [cfg.hidden] * cfg.layers
        self.sines = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        with torch.no_grad():
            for j, lin in enumerate(self.sines):
                bound = 1 / lin.in_features if j == 0 else math.sqrt(6 / lin.in_features) / self.omega
                lin.weight.uniform_(-bound, bound)
        self.out = nn.Linear(cfg.hidden, cfg.slots * d_model)

    def propose(self, h_eff: torch.Tensor, ctx, positions: torch.Tensor, rows=None) -> torch.Tensor:
        z = h_eff
        for lin in self.sines:
            z = torch.sin(self.omega * lin(z))  # (B,T,hidden)
        return self.out(z).unflatten(-1, (self.slots, h_eff.shape[-1]))  # (B,T,S,d)
