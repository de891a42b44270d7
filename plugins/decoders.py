"""The ``motor`` decoder: a small causal transformer over at most the last ``context`` settled states.
This module also registers the ``classifier`` decoder (``classifier.py``).

Seed 001 Fig 01: "Decoder · 2 layers · ctx <= 16 · tied LM head". Each layer attends over a sliding
window, and the windows are split so that their spans add up to exactly ``context``: with 2 layers
and context 16, layer 1 sees 8 states and layer 2 sees 9 layer-1 outputs, so the output at t is a
function of h_{t-15..t} alone. Attention uses RoPE (relative), so the same output comes from the
full sequence in training and from the last ``context`` states in generation. Every layer runs
once per position: training costs O(T * context), not O(T * context^2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

import parallax

from .classifier import ClassifierDecoder


def layer_windows(context: int, layers: int) -> list[int]:
    """Per-layer window sizes w_l with sum(w_l - 1) + 1 == context (the receptive field)."""
    span = context - 1
    base, extra = divmod(span, layers)
    return [base + (1 if i >= layers - extra else 0) + 1 for i in range(layers)]


class Block(nn.Module):
    """Pre-norm sliding-window attention + MLP over ``(B,T,d)``."""

    def __init__(self, d: int, heads: int, mlp_ratio: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.norm1, self.norm2 = parallax.RMSNorm(d), parallax.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d, bias=False), nn.GELU(),
                                 nn.Linear(mlp_ratio * d, d, bias=False))

    def forward(self, z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        B, T, d = z.shape
        q, k, v = (self.qkv(self.norm1(z)).view(B, T, 3, self.heads, d // self.heads)
                   .permute(2, 0, 3, 1, 4))  # (B,h,T,dh)
        cos, sin = parallax.rope_angles(positions, d // self.heads)
        q, k = parallax.apply_rope(q, cos, sin), parallax.apply_rope(k, cos, sin)
        i = torch.arange(T, device=z.device)
        band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - self.window)  # (T,T) causal window
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=band)  # (B,h,T,dh)
        z = z + self.proj(att.transpose(1, 2).reshape(B, T, d))
        return z + self.mlp(self.norm2(z))


class MotorDecoder(parallax.MotorDecoder):
    class Config(parallax.Spec):
        type: str = "motor"
        layers: int = Field(2, ge=1, description="transformer layers over the settled states")
        context: int = Field(16, ge=1, description="settled states each output reads (its receptive field)")
        heads: int = Field(4, ge=1, description="attention heads per layer")
        mlp_ratio: int = Field(4, ge=1, description="MLP width as a multiple of d_model")
        tie: bool = Field(True, description="tie the LM head to the token encoder's embedding")

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        if not info.vocab_size:
            raise parallax.ConfigError("model.decoder.type: 'motor' needs a data source with a token vocabulary")
        if d_model % cfg.heads or (d_model // cfg.heads) % 2:
            raise parallax.ConfigError(f"model.decoder.heads: d_model {d_model} must split into {cfg.heads} "
                                       "heads of even width")
        if cfg.context < cfg.layers:
            raise parallax.ConfigError(f"model.decoder.context: must be >= layers ({cfg.layers})")
        self.cfg = cfg
        self.context = cfg.context
        self.blocks = nn.ModuleList(Block(d_model, cfg.heads, cfg.mlp_ratio, w)
                                    for w in layer_windows(cfg.context, cfg.layers))
        self.norm = parallax.RMSNorm(d_model)
        self.head = nn.Linear(d_model, info.vocab_size, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)
        self._tied: list[torch.Tensor] = []  # kept out of the module tree so the table is saved once

    def tie(self, weight) -> None:
        if self.cfg.tie and weight is not None:
            expected = self._tied[0].shape if self._tied else self.head.weight.shape
            if weight.shape != expected:
                raise parallax.ConfigError("model.decoder.tie: the encoder's table does not match the vocabulary")
            if not self._tied:  # a second call (FSDP's gathered table) only re-points the head
                del self.head
            self._tied = [weight]

    def forward(self, h: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        z = h  # (B,T,d)
        positions = torch.arange(h.shape[1], device=h.device) if positions is None else positions
        for blk in self.blocks:
            z = blk(z, positions)
        weight = self._tied[0] if self._tied else self.head.weight
        return F.linear(self.norm(z), weight)  # (B,T,V)

    def step(self, h_t: torch.Tensor, cache):
        """h_t (B,1,d); cache = (last <= context-1 states (B,n,d), absolute position of h_t)."""
        hist, t = (h_t, 0) if cache is None else (torch.cat([cache[0], h_t], dim=1), cache[1])
        hist = hist[:, -self.context :]  # (B,n,d)
        positions = torch.arange(t - hist.shape[1] + 1, t + 1, device=h_t.device)
        logits = self.forward(hist, positions)[:, -1:]  # (B,1,V)
        return logits, (hist[:, 1:] if hist.shape[1] == self.context else hist, t + 1)


@parallax.hookimpl
def register_decoders(register):
    register("motor", MotorDecoder)
    register("classifier", ClassifierDecoder)
