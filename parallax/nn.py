"""Small building blocks shared by the core and plugins: RMSNorm and rotary position embeddings."""
from __future__ import annotations

import torch
from torch import nn

RMSNorm = nn.RMSNorm


def rope_angles(positions: torch.Tensor, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables ``(T, dim/2)`` for absolute ``positions (T,)`` (RoFormer, Su et al. 2021)."""
    inv = base ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)  # (dim/2,)
    ang = positions.to(torch.float32)[:, None] * inv[None, :]  # (T, dim/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :dim/2], x[..., dim/2:]) of ``x (..., T, dim)`` by the given angles."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (..., T, dim/2) each
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)
