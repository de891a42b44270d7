"""The reference workspace ``cws``: the inner loop of DESIGN.md §2.3 in plain PyTorch.

    h_eff   = RMSNorm(h)
    pool    = RMSNorm(slots)                      (per slot, so token-clocked slots can be cached)
    q, k, v = Q(h_eff), K(pool), V(pool)
    out, cum, raw = workspace_step_ref(q, k, v, cum, decay, base)
    h       = O(out)

Defaults (recorded in the README): h starts at the observation x (``init_h: obs``); cum starts at
1, the rest point of its update (with cum at 0 every weight starts near 0.07 and the path from the
slots to h is too weak for a lookup to form); decay is learned per head from 0.9; base is 2.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

import parallax
from parallax_kernels.workspace import workspace_step_ref


class CWSWorkspace(parallax.Workspace):
    class Config(parallax.Spec):
        type: str = "cws"
        heads: int = Field(4, ge=1, description="workspace heads H")
        decay: float = Field(0.9, gt=0, lt=1, description="initial decay of cum")
        learn_decay: bool = Field(True, description="learn decay per head (sigmoid-parameterised)")
        base: float = Field(2.0, gt=1, description="weights = log1p(silu(cum)) / ln(base)")
        init_h: Literal["obs", "zeros"] = Field("obs", description="initial h: the observation x, or zeros")
        init_cum: float = Field(
            1.0, description="initial value of every cum entry; 1 is the rest point of the pull toward 1"
        )

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        if d_model % cfg.heads:
            raise parallax.ConfigError(f"model.workspace.heads: d_model {d_model} is not divisible by {cfg.heads}")
        self.cfg = cfg
        self.heads, self.dh = cfg.heads, d_model // cfg.heads
        self.norm_h = parallax.RMSNorm(d_model)
        self.norm_pool = parallax.RMSNorm(d_model)
        self.Q = nn.Linear(d_model, d_model, bias=False)
        self.K = nn.Linear(d_model, d_model, bias=False)
        self.V = nn.Linear(d_model, d_model, bias=False)
        self.O = nn.Linear(d_model, d_model, bias=False)
        logit = torch.full((cfg.heads,), math.log(cfg.decay / (1 - cfg.decay)))
        self.decay_logit = nn.Parameter(logit, requires_grad=cfg.learn_decay)

    @property
    def decay(self) -> torch.Tensor:
        return torch.sigmoid(self.decay_logit)  # (H,)

    def init_state(self, x: torch.Tensor, n_slots: int) -> parallax.WorkspaceState:
        B, T, d = x.shape
        h = x if self.cfg.init_h == "obs" else torch.zeros_like(x)  # (B,T,d)
        cum = torch.full((B, T, self.heads, n_slots), self.cfg.init_cum, dtype=x.dtype, device=x.device)
        return parallax.WorkspaceState(h=h, cum=cum)

    def read(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm_h(h)

    def project_slots(self, slots: torch.Tensor):
        pool = self.norm_pool(slots)  # (B,T,S,d)
        shape = (*pool.shape[:-1], self.heads, self.dh)
        return self.K(pool).view(shape), self.V(pool).view(shape)  # (B,T,S,H,dh) each

    def step_fn(self, q):
        """The step implementation: the pure-PyTorch reference here; fused kernels in subclasses."""
        return workspace_step_ref

    def step(self, state, h_eff, k, v, active=None):
        q = self.Q(h_eff).unflatten(-1, (self.heads, self.dh))  # (B,T,H,dh)
        out, cum, raw = self.step_fn(q)(q, k, v, state.cum, self.decay, self.cfg.base, active)
        h = self.O(out.flatten(-2))  # (B,T,d)
        return parallax.WorkspaceState(h=h, cum=cum), raw


@parallax.hookimpl
def register_workspaces(register):
    register("cws", CWSWorkspace)
