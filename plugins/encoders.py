"""The ``token`` encoder: embedding + a short causal window of recent inputs (DESIGN.md §2.1).
This module also registers the ``image`` encoder (``image_encoder.py``).

x_t = RMSNorm(e_t + sum_{j=1..w-1} W_j e_{t-j}). The window (seed 001's x_t, x_{t-1}, x_{t-2})
lets a probe find "the token after the key" in a single read. No position is added here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

import parallax

from .image_encoder import ImageEncoder


class TokenEncoder(parallax.Encoder):
    class Config(parallax.Spec):
        type: str = "token"
        window: int = Field(3, ge=1, le=64, description="observation window: current token plus window-1 previous")

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        if not info.vocab_size:
            raise parallax.ConfigError("model.encoder.type: 'token' needs a data source with a token vocabulary")
        self.window = cfg.window
        self.embed = nn.Embedding(info.vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.shift = nn.ModuleList(nn.Linear(d_model, d_model, bias=False) for _ in range(cfg.window - 1))
        for lin in self.shift:
            nn.init.normal_(lin.weight, std=0.5 / d_model**0.5)
        self.norm = parallax.RMSNorm(d_model)

    @property
    def tied_weight(self) -> torch.Tensor:
        return self.embed.weight

    def _mix(self, e: torch.Tensor, past: list[torch.Tensor]) -> torch.Tensor:
        x = e
        for lin, p in zip(self.shift, past):
            x = x + lin(p)
        return self.norm(x)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        e = self.embed(inputs)  # (B,T,d)
        past = [F.pad(e, (0, 0, j, 0))[:, : e.shape[1]] for j in range(1, self.window)]  # e_{t-j}, zero before 0
        return self._mix(e, past)  # (B,T,d)

    def step(self, inputs_t: torch.Tensor, cache):
        """inputs_t (B,1) -> x_t (B,1,d); cache holds the last window-1 embeddings (newest first)."""
        e = self.embed(inputs_t)  # (B,1,d)
        past = list(cache) if cache is not None else []
        past = past + [torch.zeros_like(e)] * (self.window - 1 - len(past))
        x = self._mix(e, past)
        return x, ([e] + past)[: self.window - 1]


@parallax.hookimpl
def register_encoders(register):
    register("token", TokenEncoder)
    register("image", ImageEncoder)
