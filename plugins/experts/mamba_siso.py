"""Mamba SISO expert: a token-clocked selective state-space scan whose state is read out as slots.

Per channel c and state n (Mamba, Gu & Dao 2023, eq. 2a with the selective Δ, B, C of §3.2):
    a_t = exp(Δ_t[c] A[c,n]),   s_t[c,n] = a_t s_{t-1}[c,n] + Δ_t[c] B_t[n] x_t[c]
    y_t^j[c] = sum_n C_t^j[n] s_t[c,n] + D[c] x_t[c]          for readout j = 1..slots
Each readout C^j gives one slot, so the expert proposes (B,T,slots,d). Its proposals depend on
observations only (token clock): computed once per context update, cached across K steps.
The parallel forward is ``affine_scan`` over T (sequential on the CPU, Hillis-Steele elsewhere),
with its own reverse-scan backward; ``context_step`` is the one-step recurrence.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

import parallax

try:  # the CUDA kernel of the mamba_ssm package, used only when installed and on a CUDA tensor
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _selective_scan_fn
except Exception:  # not installed, or built for another torch: the pure-PyTorch scan is used
    _selective_scan_fn = None


def affine_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """s_t = a_t * s_{t-1} + b_t with s_{-1} = 0, along dim 1. a, b: (B,T,...) -> s (B,T,...).

    Differentiable through its own backward, which is the same recurrence run in reverse:
    with g_t = dL/ds_t + a_{t+1} g_{t+1}, dL/db_t = g_t and dL/da_t = g_t s_{t-1}. Autograd through
    the scan's slices would instead zero-fill a full (B,T,...) gradient for every slice it took."""
    return _AffineScan.apply(a, b)


class _AffineScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        s = _scan(a, b)  # (B,T,...)
        ctx.save_for_backward(a, s)
        return s

    @staticmethod
    def backward(ctx, grad_s):
        a, s = ctx.saved_tensors
        backward = _scan_backward_sequential if a.device.type == "cpu" else _scan_backward_parallel
        return backward(a, s, grad_s)


def _scan_backward_parallel(a: torch.Tensor, s: torch.Tensor, grad_s: torch.Tensor):
    """(dL/da, dL/db) as one reverse scan over the whole tensors."""
    a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)  # a_{t+1}, 0 past the end
    g = _scan(a_next.flip(1), grad_s.flip(1), sequential=False).flip(1)  # (B,T,...) the reverse recurrence
    return _grads(g, s)


def _scan_backward_sequential(a: torch.Tensor, s: torch.Tensor, grad_s: torch.Tensor):
    """(dL/da, dL/db) one position at a time, from the last: g_t = dL/ds_t + a_{t+1} g_{t+1}."""
    T = a.shape[1]
    g = [grad_s[:, T - 1]]  # g_t from the last position back, each (B,...)
    for t in range(T - 1, 0, -1):
        g.append(torch.addcmul(grad_s[:, t - 1], a[:, t], g[-1]))
    return _grads(torch.stack(g[::-1], dim=1), s)  # g (B,T,...)


def _grads(g: torch.Tensor, s: torch.Tensor):
    """(dL/da, dL/db) from g_t = dL/ds_t + a_{t+1} g_{t+1}: dL/da_t = g_t s_{t-1}, dL/db_t = g_t."""
    s_prev = torch.cat([torch.zeros_like(s[:, :1]), s[:, :-1]], dim=1)  # s_{t-1}, 0 before the start
    return g * s_prev, g


def _scan(a: torch.Tensor, b: torch.Tensor, sequential: bool | None = None) -> torch.Tensor:
    """The recurrence without autograd. On the CPU one step per position: T small (B,...) updates
    that stay in cache beat log2(T) passes over the whole (B,T,...) tensor. Elsewhere a Hillis-Steele
    scan (log2 T steps, stable because every composed decay is a product of values in (0,1]).
    ``sequential`` chooses the form regardless of the device."""
    T = a.shape[1]
    if a.device.type == "cpu" if sequential is None else sequential:
        out = [b[:, 0]]
        for t in range(1, T):
            out.append(torch.addcmul(b[:, t], a[:, t], out[-1]))  # (B,...)
        return torch.stack(out, dim=1)
    offset = 1
    while offset < T:
        # compose (a_t, b_t) after (a_{t-o}, b_{t-o}); positions < o have nothing before them
        b = torch.cat([b[:, :offset], b[:, offset:] + a[:, offset:] * b[:, :-offset]], dim=1)
        a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    return b


class MambaSISO(parallax.Expert):
    clock = "token"

    class Config(parallax.Spec):
        type: str = "mamba_siso"
        slots: int = Field(4, ge=1, description="readouts of the state, one slot each")
        d_state: int = Field(16, ge=1, description="state size N per channel")
        dt_min: float = Field(1e-3, gt=0, description="smallest initial step size Δ (log-uniform init)")
        dt_max: float = Field(1e-1, gt=0, description="largest initial step size Δ (log-uniform init)")

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        self.slots, self.n = cfg.slots, cfg.d_state
        d = d_model
        self.dt_proj = nn.Linear(d, d)
        # Δ initialised log-uniform in [dt_min, dt_max] through the softplus bias (as in Mamba).
        dt = torch.exp(torch.rand(d) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            self.dt_proj.weight.mul_(0.1)
        self.B_proj = nn.Linear(d, self.n, bias=False)
        self.C_proj = nn.Linear(d, self.slots * self.n, bias=False)
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, self.n + 1, dtype=torch.float32)).repeat(d, 1))  # (d,N) S4D-real
        self.D = nn.Parameter(torch.ones(d))
        self.out_proj = nn.Linear(d, d, bias=False)

    def _coeffs(self, x: torch.Tensor):
        dt = F.softplus(self.dt_proj(x))  # (B,T,d)
        A = -torch.exp(self.A_log.float())  # (d,N)
        a = torch.exp(dt.float()[..., None] * A)  # (B,T,d,N)
        b = (dt * x).float()[..., None] * self.B_proj(x).float()[:, :, None, :]  # (B,T,d,N)
        C = self.C_proj(x).float().unflatten(-1, (self.slots, self.n))  # (B,T,S,N)
        return a, b, C

    def _readout(self, s: torch.Tensor, C: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("btdn,btsn->btsd", s, C) + (self.D * x.float())[:, :, None, :]  # (B,T,S,d)
        return self.out_proj(y.to(x.dtype))  # (B,T,S,d)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        if _selective_scan_fn is not None and x.is_cuda:
            return self._context_mamba_ssm(x)
        a, b, C = self._coeffs(x)
        s = affine_scan(a, b)  # (B,T,d,N)
        return self._readout(s, C, x)  # the proposals themselves

    def _context_mamba_ssm(self, x: torch.Tensor) -> torch.Tensor:
        """The same scan through mamba_ssm's kernel: the S readouts become S channel groups."""
        Bsz, T, d = x.shape
        S = self.slots
        dt = F.softplus(self.dt_proj(x)).float().transpose(1, 2).repeat(1, S, 1)  # (B,S*d,T)
        u = x.float().transpose(1, 2).repeat(1, S, 1)  # (B,S*d,T)
        A = (-torch.exp(self.A_log.float())).repeat(S, 1)  # (S*d,N)
        Bm = self.B_proj(x).float().transpose(1, 2)[:, None].expand(Bsz, S, self.n, T).contiguous()  # (B,S,N,T)
        Cm = self.C_proj(x).float().view(Bsz, T, S, self.n).permute(0, 2, 3, 1).contiguous()  # (B,S,N,T)
        y = _selective_scan_fn(u.contiguous(), dt.contiguous(), A, Bm, Cm, D=self.D.float().repeat(S))  # (B,S*d,T)
        return self.out_proj(y.view(Bsz, S, d, T).permute(0, 3, 1, 2).to(x.dtype))  # (B,T,S,d)

    def context_step(self, x_t: torch.Tensor, cache):
        a, b, C = self._coeffs(x_t)  # (B,1,d,N), (B,1,d,N), (B,1,S,N)
        s = b if cache is None else a * cache + b  # (B,1,d,N)
        return self._readout(s, C, x_t), s

    def propose(self, h_eff, ctx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return ctx  # (B,T,S,d); independent of h by construction
