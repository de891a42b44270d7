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
    raw = torch.einsum("bthd,btshd->bths", q, k) / math.sqrt(dh)  # (B,T,H,S)
    decay = decay.to(raw.dtype)[:, None]  # (H,1) broadcasts over S
    cum = decay * cum + (1.0 - decay) + raw  # (B,T,H,S)
    weights = torch.log1p(F.silu(cum)) / math.log(base)  # (B,T,H,S)
    out = torch.einsum("bths,btshd->bthd", weights, v)  # (B,T,H,dh)
    if active is not None:
        a = active[..., None, None]  # (B,T,1,1)
        out, raw = out * a, raw * a
        cum = torch.where(a, cum, old)
    return out, cum, raw
