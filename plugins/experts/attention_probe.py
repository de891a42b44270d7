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

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

import parallax
from parallax_kernels.covariance_attention import covariance_attention


class AttentionProbe(parallax.Expert):
    clock = "h"
    packs = True

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
        # halted positions for that variant instead of packing them
        self.packs = cfg.variant == "softmax"
        if cfg.variant == "covariance":
            self.r_proj = nn.Linear(d_model, cfg.slots * d_model, bias=False)
            nn.init.zeros_(self.r_proj.weight)  # r = 0: exact softmax attention at the start

    def _kv(self, x: torch.Tensor, positions: torch.Tensor) -> ProbeContext:
        B, T, _ = x.shape
        k = self.k_proj(x).view(B, T, self.heads, self.dh).transpose(1, 2)  # (B,Hp,T,dh)
        v = self.v_proj(x).view(B, T, self.heads, self.dh).transpose(1, 2)  # (B,Hp,T,dh)
        cos, sin = parallax.rope_angles(positions, self.dh, self.base)  # (T,dh/2) each
        return ProbeContext(parallax.apply_rope(k, cos, sin), v, cos, sin)

    def context(self, x: torch.Tensor) -> ProbeContext:
        return self._kv(x, torch.arange(x.shape[1], device=x.device))

    def context_step(self, x_t: torch.Tensor, cache: ProbeContext | None):
        t = 0 if cache is None else cache.k.shape[2]
        new = self._kv(x_t, torch.tensor([t], device=x_t.device))
        if cache is not None:
            new = ProbeContext(*(torch.cat([c, n], dim=d) for c, n, d in zip(cache, new, (2, 2, 0, 0))))
        return new, new

    def propose(self, h_eff: torch.Tensor, ctx, positions: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """h_eff (B,Tq,d) at positions (Tq,) -> (B,Tq,S,d); or packed: h_eff (1,N,d), query n at
        positions[n] of batch row rows[n] (rows ascending) -> (1,N,S,d)."""
        k, v = ctx.k, ctx.v  # (B,Hp,Tk,dh)
        B, Tq, d = h_eff.shape
        q = self.q_proj(h_eff).view(B, Tq, self.slots, self.heads, self.dh)  # (B,Tq,S,Hp,dh)
        q = q.permute(0, 3, 2, 1, 4).reshape(B, self.heads * self.slots, Tq, self.dh)  # (B,Hp*S,Tq,dh)
        # the keys' angle table, read at the queries' positions: no table is rebuilt at every K step
        cos, sin = ctx.cos.index_select(0, positions), ctx.sin.index_select(0, positions)  # (Tq,dh/2)
        q = parallax.apply_rope(q, cos, sin)
        if rows is not None:
            out = _attend_packed(q[0], k, v, positions, rows)[None]  # (1,Hp*S,N,dh)
        elif self.variant == "covariance":
            r = self.r_proj(h_eff).view(B, Tq, self.slots, self.heads, self.dh)  # (B,Tq,S,Hp,dh)
            r = parallax.apply_rope(r.permute(0, 3, 2, 1, 4).reshape(B, self.heads * self.slots, Tq, self.dh), cos, sin)
            out = covariance_attention(q, k, v, r, positions, block=self.block)  # (B,Hp*S,Tq,dh)
        else:
            mask = torch.arange(k.shape[2], device=q.device) <= positions[:, None]  # (Tq,Tk) causal
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # (B,Hp*S,Tq,dh)
        out = out.view(B, self.heads, self.slots, Tq, self.dh).permute(0, 3, 2, 1, 4).reshape(B, Tq, self.slots, d)
        return self.o_proj(out)  # (B,Tq,S,d)


class ProbeContext(NamedTuple):
    """What the probe reads at every K step, computed once per context update: keys with RoPE and
    values ``(B,Hp,Tk,dh)``, and the angle table of the key positions ``(Tk,dh/2)``, which the queries
    at those positions reuse."""

    k: torch.Tensor
    v: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


def _attend_packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                   rows: torch.Tensor) -> torch.Tensor:
    """Packed queries q (G,N,dh) (G = Hp*S query heads), query n of batch row rows[n] at positions[n],
    against each row's keys and values k, v (B,Hp,Tk,dh) -> (G,N,dh).

    Every projection around this runs on the N queries alone; only the attention itself sees the
    rows: laid out per row (``_attend_rows``), or, for a list no longer than the batch (the last
    positions still settling), with each query's own row gathered (``_attend_gathered``)."""
    if rows.numel() <= k.shape[0]:
        return _attend_gathered(q, k, v, positions, rows)
    return _attend_rows(q, k, v, positions, rows)


def _attend_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                 rows: torch.Tensor) -> torch.Tensor:
    """``_attend_packed`` laid out per row, ``(B',G,W,dh)`` for the B' rows that have queries and W
    the most queries of any row, so that SDPA reads each query's own row up to its own position."""
    B = k.shape[0]
    counts = torch.bincount(rows, minlength=B)  # (B,) queries per row
    width, empty = torch.stack([counts.max(), (counts == 0).sum()]).tolist()
    if empty:  # leave out the rows with no query: their keys would be read for nothing
        present = counts > 0
        rows = (present.cumsum(0) - 1)[rows]  # (N,) index among the present rows
        k, v, counts = k[present], v[present], counts[present]
    start = counts.cumsum(0) - counts  # (B',) first query of each row
    col = torch.arange(rows.numel(), device=q.device) - start[rows]  # (N,) slot of each query in its row
    qp = q.new_zeros(k.shape[0], q.shape[0], width, q.shape[-1])  # (B',G,W,dh)
    qp[rows, :, col] = q.transpose(0, 1)
    pos = positions.new_zeros(k.shape[0], width)  # (B',W) padding attends to key 0, and is dropped
    pos[rows, col] = positions
    mask = torch.arange(k.shape[2], device=q.device) <= pos[..., None]  # (B',W,Tk) causal, per query
    out = F.scaled_dot_product_attention(qp, k, v, attn_mask=mask[:, None], enable_gqa=True)  # (B',G,W,dh)
    return out[rows, :, col].transpose(0, 1)  # (G,N,dh)


def _attend_gathered(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                     rows: torch.Tensor) -> torch.Tensor:
    """``_attend_packed`` for a short list: each query takes a copy of its own row's keys and values,
    ``(N,Hp,Tk,dh)``, no more than the batch's when N <= B, and its S slot queries of a head attend as
    one block. On this project's CPU (B 32, 72 keys) it takes a third of the per-row layout's time for
    N of 8-32, whose bincount, host sync and scatter cost more than the attention, and 1.4-12x its
    time for N of 128-2,048 (docs/measurements/cpu/k_loop_overhead/packed_attention.py)."""
    G, N, dh = q.shape
    Hp = k.shape[1]
    qn = q.view(Hp, G // Hp, N, dh).permute(2, 0, 1, 3)  # (N,Hp,S,dh): query head g = hp * S + s
    kn, vn = k.index_select(0, rows), v.index_select(0, rows)  # (N,Hp,Tk,dh)
    mask = torch.arange(k.shape[2], device=q.device) <= positions[:, None]  # (N,Tk) causal, per query
    out = F.scaled_dot_product_attention(qn, kn, vn, attn_mask=mask[:, None, None])  # (N,Hp,S,dh)
    return out.permute(1, 2, 0, 3).reshape(G, N, dh)
