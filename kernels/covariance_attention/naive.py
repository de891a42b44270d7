"""Covariance-corrected softmax attention, the pure-PyTorch reference (seed 004, DESIGN.md §3).

Per query i, with the causal softmax weights w_ij = softmax_j(q_i·k_j / sqrt(dh)) over visible j:
    mu_v       = sum_j w_ij v_j
    s_ij       = r_i·k_j                                  (the learned probe r against each key)
    Cov_w(v,s) = sum_j w_ij v_j s_ij - mu_v * sum_j w_ij s_ij
    out_i      = mu_v - Cov_w(v, s)
With r = 0 the correction vanishes and this is softmax attention. The reference materialises the
(Tq,Tk) weights, so it is for small T and for checking ``streaming.py``.

Shapes: q, r (B,Hq,Tq,dh); k, v (B,Hk,Tk,dh) with Hq a multiple of Hk (grouped-query attention:
query head h reads key/value head h // (Hq/Hk), as SDPA's ``enable_gqa``); q_pos (Tq,) the absolute
position of each query: key j is visible to query i when j <= q_pos[i].
"""
from __future__ import annotations

import math

import torch


def covariance_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
                             q_pos: torch.Tensor) -> torch.Tensor:
    """q, r (B,Hq,Tq,dh); k, v (B,Hk,Tk,dh); q_pos (Tq,) -> out (B,Hq,Tq,dh)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (B,Hq,Tk,dh)
    v = v.repeat_interleave(group, dim=1)  # (B,Hq,Tk,dh)
    visible = torch.arange(k.shape[2], device=q.device)[None, :] <= q_pos[:, None]  # (Tq,Tk)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B,Hq,Tq,Tk)
    w = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)  # (B,Hq,Tq,Tk)
    s = r @ k.transpose(-1, -2)  # (B,Hq,Tq,Tk)
    mu = w @ v  # (B,Hq,Tq,dh)
    mean_s = (w * s).sum(-1, keepdim=True)  # (B,Hq,Tq,1)
    cov = (w * s) @ v - mu * mean_s  # (B,Hq,Tq,dh)
    return mu - cov
