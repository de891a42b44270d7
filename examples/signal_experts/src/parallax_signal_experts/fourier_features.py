"""Random Fourier features expert: h-clocked and stateless (Rahimi & Recht 2007; Tancik et al. 2020).

Shapes: B batch, T positions, S slots, d model width, F frequencies.

    z         = 2π h_eff Ω                   Ω (d,F) ~ N(0, scale²)               (B,T,F)
    φ         = [cos z, sin z] / sqrt(F)                                         (B,T,2F)
    proposals = W φ + b                                                          (B,T,S,d)

φ·φ' approximates a Gaussian kernel of the workspace reads, so nearby states get similar proposals
and ``scale`` sets how near is near. Ω is fixed, and saved with the model as a buffer, unless
``learn_frequencies`` makes it a parameter. The phases are computed in at least float32, because
under bf16 autocast 2π h Ω loses most of its digits before the cosine.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

import parallax


class FourierFeatures(parallax.Expert):
    clock = "h"

    class Config(parallax.Spec):
        type: str = "fourier_features"
        slots: int = Field(1, ge=1)
        features: int = Field(32, ge=1, description="frequencies F; the expert reads 2F features")
        scale: float = Field(0.3, gt=0, description="std of the frequencies: the kernel's inverse length scale")
        learn_frequencies: bool = Field(False, description="train the frequencies instead of fixing them")

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        self.slots, self.features = cfg.slots, cfg.features
        omega = torch.randn(d_model, cfg.features) * cfg.scale  # (d,F)
        if cfg.learn_frequencies:
            self.omega = nn.Parameter(omega)
        else:
            self.register_buffer("omega", omega)
        self.out = nn.Linear(2 * cfg.features, cfg.slots * d_model)

    def propose(self, h_eff: torch.Tensor, ctx, positions: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(h_eff.dtype, torch.float32)
        with torch.autocast(h_eff.device.type, enabled=False):
            z = 2 * math.pi * (h_eff.to(wide) @ self.omega.to(wide))  # (B,T,F)
        phi = torch.cat([z.cos(), z.sin()], dim=-1) / math.sqrt(self.features)  # (B,T,2F)
        return self.out(phi.to(h_eff.dtype)).unflatten(-1, (self.slots, h_eff.shape[-1]))  # (B,T,S,d)
