"""Attention probe: an h-clocked causal read of the observations with RoPE (DESIGN.md §2.2).

Each of ``slots`` query sets is projected from ``h_eff`` at position t and attends over the
observations ``x_{<=t}``; keys and values come from ``x`` with RoPE on queries and keys. The
slot queries share the key/value heads, which is grouped-query attention, so SDPA runs them with
``enable_gqa``. Keys and values are computed once per context update (``context``) and cached
for generation (``context_step``); the queries are recomputed at every K step.

``variant: covariance`` replaces softmax attention with the covariance-corrected attention of
seed 004: out = mu_v - Cov_w(v, r·k), with a learned probe r = W_r h_eff per slot query (RoPE'd like
the query, so r·k sees relative position too). W_r starts at zero, so the variant starts as exact
softmax attention and learns its correction. It streams over keys
(``parallax_kernels.covariance_attention``), with SDPA's memory profile.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

import parallax
from parallax_kernels.covariance_attention import covariance_attention


class AttentionProbe(parallax.Expert):
    clock = "h"
    gather = True

    class Config(parallax.Spec):
        type: str = "attention_probe"
        slots: int = Field(2, ge=1, description="query sets, one slot each")
        heads: int = Field(4, ge=1, description="attention heads (d_model must divide by it)")
        rope_base: float = Field(10000.0, gt=0, description="RoPE frequency base")
        variant: Literal["softmax", "covariance"] = Field(
            "softmax", description="softmax attention, or covariance-corrected attention (mu_v - Cov_w(v, r·k))"
        )
        block: int = Field(64, ge=1, description="key block of the streaming covariance attention")

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        if d_model % cfg.heads or (d_model // cfg.heads) % 2:
            raise parallax.ConfigError(
                f"attention_probe.heads: d_model {d_model} must split into {cfg.heads} heads of even width"
            )
        self.slots, self.heads, self.dh, self.base = cfg.slots, cfg.heads, d_model // cfg.heads, cfg.rope_base
        self.q_proj = nn.Linear(d_model, cfg.slots * d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.variant, self.block = cfg.variant, cfg.block
        # the streaming covariance kernel takes one row of query positions, so the K loop masks
        # halted positions for that variant instead of gathering them
        self.gather = cfg.variant == "softmax"
        if cfg.variant == "covariance":
            self.r_proj = nn.Linear(d_model, cfg.slots * d_model, bias=False)
            nn.init.zeros_(self.r_proj.weight)  # r = 0: exact softmax attention at the start

    def _kv(self, x: torch.Tensor, positions: torch.Tensor):
        B, T, _ = x.shape
        k = self.k_proj(x).view(B, T, self.heads, self.dh).transpose(1, 2)  # (B,Hp,T,dh)
        v = self.v_proj(x).view(B, T, self.heads, self.dh).transpose(1, 2)  # (B,Hp,T,dh)
        cos, sin = parallax.rope_angles(positions, self.dh, self.base)
        return parallax.apply_rope(k, cos, sin), v

    def context(self, x: torch.Tensor):
        return self._kv(x, torch.arange(x.shape[1], device=x.device))

    def context_step(self, x_t: torch.Tensor, cache):
        t = 0 if cache is None else cache[0].shape[2]
        k, v = self._kv(x_t, torch.tensor([t], device=x_t.device))
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        return (k, v), (k, v)

    def propose(self, h_eff: torch.Tensor, ctx, positions: torch.Tensor) -> torch.Tensor:
        k, v = ctx  # (B,Hp,Tk,dh)
        B, Tq, d = h_eff.shape
        q = self.q_proj(h_eff).view(B, Tq, self.slots, self.heads, self.dh)  # (B,Tq,S,Hp,dh)
        q = q.permute(0, 3, 2, 1, 4).reshape(B, self.heads * self.slots, Tq, self.dh)  # (B,Hp*S,Tq,dh)
        # positions (Tq,) for every row, or (B,Tq) when the K loop has gathered each row's active positions
        cos, sin = parallax.rope_angles(positions.reshape(-1), self.dh, self.base)
        cos, sin = cos.view(*positions.shape, -1), sin.view(*positions.shape, -1)  # (...,Tq,dh/2)
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]  # (B,1,Tq,dh/2) broadcasts over heads
        q = parallax.apply_rope(q, cos, sin)
        if self.variant == "covariance":
            r = self.r_proj(h_eff).view(B, Tq, self.slots, self.heads, self.dh)  # (B,Tq,S,Hp,dh)
            r = parallax.apply_rope(r.permute(0, 3, 2, 1, 4).reshape(B, self.heads * self.slots, Tq, self.dh), cos, sin)
            out = covariance_attention(q, k, v, r, positions, block=self.block)  # (B,Hp*S,Tq,dh)
        else:
            mask = torch.arange(k.shape[2], device=q.device) <= positions[..., None]  # (...,Tq,Tk) causal
            if positions.dim() == 2:
                mask = mask[:, None]  # (B,1,Tq,Tk)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # (B,Hp*S,Tq,dh)
        out = out.view(B, self.heads, self.slots, Tq, self.dh).permute(0, 3, 2, 1, 4).reshape(B, Tq, self.slots, d)
        return self.o_proj(out)  # (B,Tq,S,d)
