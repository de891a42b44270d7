"""Pure-PyTorch reference of one CWS workspace step (DESIGN.md §2.3; seed 001 §03 "The inner loop").

    raw     = q . k / sqrt(dh)                       # unnormalised logits, no softmax
    cum     = decay * cum + (1 - decay) + raw        # decay acts on raw logits, pulls cum toward 1
    weights = log1p(silu(cum)) / ln(base)            # sublinear; slots compete on absolute energy
    out     = sum_s weights[..., s] * v[..., s, :]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def workspace_step_ref(
    q: torch.Tensor,  # (B,T,H,dh)
    k: torch.Tensor,  # (B,T,S,H,dh)
    v: torch.Tensor,  # (B,T,S,H,dh)
    cum: torch.Tensor,  # (B,T,H,S)
    decay: torch.Tensor,  # (H,) in (0,1)
    base: float,
    active: torch.Tensor | None = None,  # (B,T) bool: positions still running
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``out (B,T,H,dh)``, the new ``cum (B,T,H,S)`` and ``raw (B,T,H,S)``.

    A position where ``active`` is False keeps its cum and gets out = 0 and raw = 0 (it has halted).
    """
    dh = q.shape[-1]
    old = cum
    # broadcast-and-sum rather than einsum: einsum lays k and v out again for a batched matmul of
    # (1 x dh) by (dh x S) per position and head, which on the CPU cost 2-2.5x this whole step
    raw = (q.unsqueeze(-3) * k).sum(-1).transpose(-1, -2) / math.sqrt(dh)  # (B,T,S,H,dh) -> (B,T,H,S)
    decay = decay.to(raw.dtype)[:, None]  # (H,1) broadcasts over S
    cum = decay * cum + (1.0 - decay) + raw  # (B,T,H,S)
    weights = torch.log1p(F.silu(cum)) / math.log(base)  # (B,T,H,S)
    out = (weights.transpose(-1, -2).unsqueeze(-1) * v).sum(-3)  # (B,T,S,H,dh) -> (B,T,H,dh)
    if active is not None:
        a = active[..., None, None]  # (B,T,1,1)
        out, raw = out * a, raw * a
        cum = torch.where(a, cum, old)
    return out, cum, raw
