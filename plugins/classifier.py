"""The ``classifier`` motor decoder: settled states (B,T,d) -> class logits (B,C) (DESIGN.md §2.6).

``pool: mean`` averages the normalised states of all positions (every patch of an image);
``pool: last`` reads the last position, which has seen the whole raster through the causal experts.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

import parallax


class ClassifierDecoder(parallax.MotorDecoder):
    class Config(parallax.Spec):
        type: str = "classifier"
        pool: Literal["mean", "last"] = Field("mean", description="mean over positions, or the last position")
        hidden: int = Field(128, ge=0, description="width of the hidden layer; 0 reads out linearly")

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        if not info.num_classes:
            raise parallax.ConfigError(
                "model.decoder.type: 'classifier' needs a data source with classes (num_classes)")
        self.pool = cfg.pool
        self.norm = parallax.RMSNorm(d_model)
        if cfg.hidden:
            self.head = nn.Sequential(nn.Linear(d_model, cfg.hidden), nn.GELU(),
                                      nn.Linear(cfg.hidden, info.num_classes))
        else:
            self.head = nn.Linear(d_model, info.num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.norm(h)  # (B,T,d)
        z = z.mean(dim=1) if self.pool == "mean" else z[:, -1]  # (B,d)
        return self.head(z)  # (B,C)
