"""Causal convolution expert: token-clocked, one slot per time scale.

Shapes: B batch, T positions, S slots (scales), d model width, k taps. Slot j is a depthwise causal
convolution of the observations with dilation ``dilation_base**j``:

    c_t^j[c]   = sum_{i<k} W^j[c,i] * x_{t - (k-1-i) * dilation_base**j}[c]     (zero before position 0)
    proposal^j = W_o GELU(c^j)                                               (B,T,S,d)

so slot 0 reads the last k positions and slot S-1 reaches ``(k-1) * dilation_base**(S-1)`` back.
The proposals depend on observations only (token clock): the K loop computes them once per context
update and reuses them in every K step. ``context_step`` keeps the last ``reach`` observations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

import parallax


class CausalConv(parallax.Expert):
    clock = "token"

    class Config(parallax.Spec):
        type: str = "causal_conv"
        slots: int = Field(3, ge=1, description="time scales, one slot each")
        kernel_size: int = Field(3, ge=2, description="taps per scale")
        dilation_base: int = Field(2, ge=1, description="slot j uses dilation dilation_base**j")

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        self.slots, self.k = cfg.slots, cfg.kernel_size
        self.dilations = [cfg.dilation_base**j for j in range(cfg.slots)]
        self.reach = (cfg.kernel_size - 1) * self.dilations[-1]  # how far back the widest scale reads
        # Every scale starts as a moving average; the noise makes the scales' channels differ from step 0.
        w = torch.full((cfg.slots, d_model, cfg.kernel_size), 1.0 / cfg.kernel_size)
        self.weight = nn.Parameter(w + 0.1 * torch.randn_like(w) / cfg.kernel_size**0.5)  # (S,d,k)
        self.out = nn.Linear(d_model, d_model)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,T,d) -> proposals (B,T,S,d), all positions in parallel."""
        xc = x.transpose(1, 2)  # (B,d,T): conv1d runs over the last dim
        scales = []
        for j, dil in enumerate(self.dilations):
            padded = F.pad(xc, ((self.k - 1) * dil, 0))  # (B,d,(k-1)dil+T) zeros before position 0
            scales.append(F.conv1d(padded, self.weight[j][:, None, :], dilation=dil, groups=xc.shape[1]))  # (B,d,T)
        c = torch.stack(scales, dim=1).permute(0, 3, 1, 2)  # (B,T,S,d)
        return self.out(F.gelu(c))

    def context_step(self, x_t: torch.Tensor, cache: torch.Tensor | None):
        """x_t (B,1,d); cache (B,reach,d), the previous observations, oldest first -> ((B,1,S,d), cache)."""
        if cache is None:
            cache = x_t.new_zeros(x_t.shape[0], self.reach, x_t.shape[2])  # the zero padding of context
        window = torch.cat([cache, x_t], dim=1)  # (B,reach+1,d); index reach is position t
        taps = [window[:, self.reach - (self.k - 1) * dil :: dil] for dil in self.dilations]  # (B,k,d) each
        c = torch.stack([torch.einsum("bkd,dk->bd", tap, self.weight[j]) for j, tap in enumerate(taps)],
                        dim=1)  # (B,S,d)
        return self.out(F.gelu(c))[:, None], window[:, 1:]

    def propose(self, h_eff, ctx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return ctx  # (B,T,S,d): the context already is the proposals, and h_eff plays no part
