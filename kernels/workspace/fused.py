"""Fused Triton kernels for one CWS workspace step, forward and backward.

Same math and signature as ``naive.workspace_step_ref`` (DESIGN.md §2.3). One program handles one
(position, head): it loads q (dh), the S slot keys and values (S,dh) and cum (S), and writes only
``out (dh)`` and the new ``cum (S)``. ``raw`` and ``weights`` live in registers and are never
written: ``raw`` can be recovered exactly from the two cums (raw = cum' - decay*cum - (1 - decay)).
The backward kernel recomputes them the same way (one extra dot product per slot), so nothing
beyond the step's inputs is saved for backward.

``active (B,T)`` (optional) marks positions that still run; a halted position copies its cum,
writes out = 0 and skips its loads, as the masked K loop would discard its result anyway.

On a machine without CUDA the kernels run under ``TRITON_INTERPRET=1`` (slow, for tests).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _fwd_kernel(
    Q, K, V, CUM, DECAY, ACTIVE, OUT, CUM_OUT,
    S, DH, H,
    scale, inv_ln_base,
    HAS_ACTIVE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)  # one (position n, head h) per program
    n = pid // H
    h = pid % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    ms, md = offs_s < S, offs_d < DH
    cum_ptr = CUM + n * H * S + h * S + offs_s  # cum (N,H,S)
    c0 = tl.load(cum_ptr, mask=ms, other=0.0).to(tl.float32)  # (S,)
    run = True
    if HAS_ACTIVE:
        run = tl.load(ACTIVE + n) != 0
    if run:
        q = tl.load(Q + n * H * DH + h * DH + offs_d, mask=md, other=0.0).to(tl.float32)  # (dh,)
        kv = n * S * H * DH + offs_s[:, None] * H * DH + h * DH + offs_d[None, :]  # k, v (N,S,H,dh)
        m2 = ms[:, None] & md[None, :]
        k = tl.load(K + kv, mask=m2, other=0.0).to(tl.float32)  # (S,dh)
        v = tl.load(V + kv, mask=m2, other=0.0).to(tl.float32)  # (S,dh)
        decay = tl.load(DECAY + h).to(tl.float32)
        raw = tl.sum(k * q[None, :], axis=1) * scale  # (S,)
        c = decay * c0 + (1.0 - decay) + raw  # (S,)
        silu = c / (1.0 + tl.exp(-c))
        w = tl.log(1.0 + silu) * inv_ln_base  # (S,)
        w = tl.where(ms, w, 0.0)
        out = tl.sum(w[:, None] * v, axis=0)  # (dh,)
        tl.store(OUT + n * H * DH + h * DH + offs_d, out.to(OUT.dtype.element_ty), mask=md)
        tl.store(CUM_OUT + n * H * S + h * S + offs_s, c.to(CUM_OUT.dtype.element_ty), mask=ms)
    else:
        tl.store(OUT + n * H * DH + h * DH + offs_d, tl.zeros([BLOCK_D], dtype=tl.float32).to(OUT.dtype.element_ty), mask=md)
        tl.store(CUM_OUT + n * H * S + h * S + offs_s, c0.to(CUM_OUT.dtype.element_ty), mask=ms)


@triton.jit
def _bwd_kernel(
    Q, K, V, CUM, DECAY, ACTIVE, G_OUT, G_CUM,
    GQ, GK, GV, GCUM0, GDECAY_PART,
    S, DH, H,
    scale, inv_ln_base,
    HAS_ACTIVE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid // H
    h = pid % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    ms, md = offs_s < S, offs_d < DH
    m2 = ms[:, None] & md[None, :]
    sidx = n * H * S + h * S + offs_s
    didx = n * H * DH + h * DH + offs_d
    kv = n * S * H * DH + offs_s[:, None] * H * DH + h * DH + offs_d[None, :]
    g_cum = tl.load(G_CUM + sidx, mask=ms, other=0.0).to(tl.float32)  # (S,) grad w.r.t. cum'
    run = True
    if HAS_ACTIVE:
        run = tl.load(ACTIVE + n) != 0
    if run:
        q = tl.load(Q + didx, mask=md, other=0.0).to(tl.float32)
        k = tl.load(K + kv, mask=m2, other=0.0).to(tl.float32)
        v = tl.load(V + kv, mask=m2, other=0.0).to(tl.float32)
        c0 = tl.load(CUM + sidx, mask=ms, other=0.0).to(tl.float32)
        g_out = tl.load(G_OUT + didx, mask=md, other=0.0).to(tl.float32)  # (dh,)
        decay = tl.load(DECAY + h).to(tl.float32)
        raw = tl.sum(k * q[None, :], axis=1) * scale
        c = decay * c0 + (1.0 - decay) + raw
        sig = 1.0 / (1.0 + tl.exp(-c))
        silu = c * sig
        w = tl.log(1.0 + silu) * inv_ln_base
        dw_dc = sig * (1.0 + c * (1.0 - sig)) / (1.0 + silu) * inv_ln_base  # d log1p(silu(c)) / dc
        g_w = tl.sum(v * g_out[None, :], axis=1)  # (S,)
        g_c = tl.where(ms, g_w * dw_dc + g_cum, 0.0)  # (S,)
        g_raw = g_c * scale
        tl.store(GQ + didx, tl.sum(g_raw[:, None] * k, axis=0).to(GQ.dtype.element_ty), mask=md)
        tl.store(GK + kv, (g_raw[:, None] * q[None, :]).to(GK.dtype.element_ty), mask=m2)
        tl.store(GV + kv, (tl.where(ms, w, 0.0)[:, None] * g_out[None, :]).to(GV.dtype.element_ty), mask=m2)
        tl.store(GCUM0 + sidx, (decay * g_c).to(GCUM0.dtype.element_ty), mask=ms)
        tl.store(GDECAY_PART + n * H + h, tl.sum(g_c * (c0 - 1.0), axis=0))
    else:  # halted: cum passed through unchanged, nothing else was read
        zd = tl.zeros([BLOCK_D], dtype=tl.float32)
        tl.store(GQ + didx, zd.to(GQ.dtype.element_ty), mask=md)
        tl.store(GK + kv, tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32).to(GK.dtype.element_ty), mask=m2)
        tl.store(GV + kv, tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32).to(GV.dtype.element_ty), mask=m2)
        tl.store(GCUM0 + sidx, g_cum.to(GCUM0.dtype.element_ty), mask=ms)
        tl.store(GDECAY_PART + n * H + h, 0.0)


def _launch_shape(q: torch.Tensor, k: torch.Tensor):
    B, T, H, dh = q.shape
    S = k.shape[2]
    return B * T, H, S, dh, triton.next_power_of_2(max(S, 2)), triton.next_power_of_2(max(dh, 16))


class _WorkspaceStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cum, decay, base, active):
        q, k, v, cum = q.contiguous(), k.contiguous(), v.contiguous(), cum.contiguous()
        decay = decay.contiguous().float()
        N, H, S, dh, BS, BD = _launch_shape(q, k)
        out = torch.empty_like(q)
        cum_out = torch.empty(cum.shape, device=cum.device, dtype=torch.promote_types(cum.dtype, q.dtype))
        act = active.reshape(-1).to(torch.int8).contiguous() if active is not None else q  # unused if None
        scale, inv = 1.0 / math.sqrt(dh), 1.0 / math.log(base)
        _fwd_kernel[(N * H,)](q, k, v, cum, decay, act, out, cum_out, S, dh, H, scale, inv,
                              HAS_ACTIVE=active is not None, BLOCK_S=BS, BLOCK_D=BD)
        ctx.save_for_backward(q, k, v, cum, decay, act)
        ctx.meta = (base, active is not None, cum.dtype)
        return out, cum_out

    @staticmethod
    def backward(ctx, g_out, g_cum):
        q, k, v, cum, decay, act = ctx.saved_tensors
        base, has_active, cum_dtype = ctx.meta
        N, H, S, dh, BS, BD = _launch_shape(q, k)
        g_out = torch.zeros_like(q) if g_out is None else g_out.contiguous()
        g_cum = torch.zeros(cum.shape, device=q.device, dtype=torch.float32) if g_cum is None else g_cum.contiguous()
        gq, gk, gv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        gcum0 = torch.empty(cum.shape, device=q.device, dtype=cum_dtype)
        gdec = torch.empty(N, H, device=q.device, dtype=torch.float32)
        _bwd_kernel[(N * H,)](q, k, v, cum, decay, act, g_out, g_cum, gq, gk, gv, gcum0, gdec,
                              S, dh, H, 1.0 / math.sqrt(dh), 1.0 / math.log(base),
                              HAS_ACTIVE=has_active, BLOCK_S=BS, BLOCK_D=BD)
        return gq, gk, gv, gcum0, gdec.sum(0), None, None


def workspace_step_fused(
    q: torch.Tensor,  # (B,T,H,dh)
    k: torch.Tensor,  # (B,T,S,H,dh)
    v: torch.Tensor,  # (B,T,S,H,dh)
    cum: torch.Tensor,  # (B,T,H,S)
    decay: torch.Tensor,  # (H,) in (0,1)
    base: float,
    active: torch.Tensor | None = None,  # (B,T) bool: positions still running
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``out (B,T,H,dh)``, the new ``cum (B,T,H,S)`` and ``raw (B,T,H,S)``, as the reference.

    ``raw`` is recovered from the two cums outside the kernel (it is not stored by it, and carries no
    gradient: the K loop reads it for halting only).
    """
    out, cum_new = _WorkspaceStep.apply(q, k, v, cum, decay, base, active)
    with torch.no_grad():
        d = decay.detach().to(cum_new.dtype)[:, None]  # (H,1)
        raw = cum_new - d * cum.detach() - (1.0 - d)  # (B,T,H,S)
        if active is not None:
            raw = raw * active[..., None, None]
    return out, cum_new, raw
