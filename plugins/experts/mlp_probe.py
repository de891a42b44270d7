"""MLP probe: a stateless, h-clocked expert that sees only ``h_eff`` (DESIGN.md §2.2)."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

import parallax


class MLPProbe(parallax.Expert):
    clock = "h"
    packs = True  # position-wise: packed queries need nothing but h_eff

    class Config(parallax.Spec):
        type: str = "mlp_probe"
        slots: int = Field(1, ge=1, description="workspace slots this expert proposes")
        hidden: int = Field(128, ge=1, description="hidden width of the MLP")

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        self.slots = cfg.slots
        self.net = nn.Sequential(nn.Linear(d_model, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.slots * d_model))

    def propose(self, h_eff: torch.Tensor, ctx, positions: torch.Tensor, rows=None) -> torch.Tensor:
        return self.net(h_eff).unflatten(-1, (self.slots, h_eff.shape[-1]))  # (B,T,S,d)
