"""Fused Triton kernels for one CWS workspace step, forward and backward.

Same math and signature as ``naive.workspace_step_ref`` (DESIGN.md §2.3). One program handles one
position and all its heads: it loads q (H,dh), the S slot keys and values (S,H,dh), which are one
contiguous block per position, and cum (H,S), and writes ``out (H,dh)``, the new ``cum (H,S)`` and
``raw (H,S)``. ``weights`` lives in registers and is never written. ``raw`` is an output because
the halting rule reads it every step; it is S floats against the 2*S*dh the step reads.

The backward kernel recomputes raw and the weights from the saved inputs (one extra dot product
per slot), so nothing beyond the step's inputs is saved for backward. ``raw`` carries no gradient:
the K loop reads it for halting only.

``active (B,T)`` (optional) marks positions that still run; a halted position copies its cum,
writes out = 0 and raw = 0 and skips its loads, as the masked K loop would discard its result anyway.

On a machine without CUDA the kernels run under ``TRITON_INTERPRET=1`` (slow, for tests).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _tiles(n, S, H, DH, BS: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr):
    """Offsets and masks of position n's three tiles: k, v (S,H,dh); cum, raw (S,H); q, out (H,dh)."""
    s3 = tl.arange(0, BS)[:, None, None]
    h3 = tl.arange(0, BH)[None, :, None]
    d3 = tl.arange(0, BD)[None, None, :]
    s2 = tl.arange(0, BS)[:, None]
    h2 = tl.arange(0, BH)[None, :]
    hq = tl.arange(0, BH)[:, None]
    dq = tl.arange(0, BD)[None, :]
    kv = n * S * H * DH + s3 * H * DH + h3 * DH + d3  # k, v (N,S,H,dh): one block per position
    c_off = n * H * S + h2 * S + s2  # cum, raw (N,H,S) read as (S,H)
    q_off = n * H * DH + hq * DH + dq  # q, out (N,H,dh)
    m3 = (s3 < S) & (h3 < H) & (d3 < DH)
    m2 = (s2 < S) & (h2 < H)
    mq = (hq < H) & (dq < DH)
    return kv, m3, c_off, m2, q_off, mq, h2


@triton.jit
def _logits(q, k, c0, decay, scale):
    """raw (S,H) and the updated cum (S,H) from q (H,dh), k (S,H,dh), cum (S,H) and decay (1,H)."""
    raw = tl.sum(k * q[None, :, :], axis=2) * scale
    return raw, decay * c0 + (1.0 - decay) + raw


@triton.jit
def _fwd_kernel(
    Q, K, V, CUM, DECAY, ACTIVE, OUT, CUM_OUT, RAW,
    S, H, DH,
    scale, inv_ln_base,
    HAS_ACTIVE: tl.constexpr, BS: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)  # one position per program, all heads
    kv, m3, c_off, m2, q_off, mq, h2 = _tiles(n, S, H, DH, BS, BH, BD)
    c0 = tl.load(CUM + c_off, mask=m2, other=0.0).to(tl.float32)  # (S,H)
    run = True
    if HAS_ACTIVE:
        run = tl.load(ACTIVE + n) != 0
    if run:
        q = tl.load(Q + q_off, mask=mq, other=0.0).to(tl.float32)  # (H,dh)
        k = tl.load(K + kv, mask=m3, other=0.0).to(tl.float32)  # (S,H,dh)
        v = tl.load(V + kv, mask=m3, other=0.0).to(tl.float32)  # (S,H,dh)
        decay = tl.load(DECAY + h2, mask=h2 < H, other=0.0).to(tl.float32)  # (1,H)
        raw, c = _logits(q, k, c0, decay, scale)  # (S,H) each
        silu = c / (1.0 + tl.exp(-c))
        w = tl.where(m2, tl.log(1.0 + silu) * inv_ln_base, 0.0)  # (S,H)
        out = tl.sum(w[:, :, None] * v, axis=0)  # (H,dh)
        tl.store(OUT + q_off, out.to(OUT.dtype.element_ty), mask=mq)
        tl.store(CUM_OUT + c_off, c.to(CUM_OUT.dtype.element_ty), mask=m2)
        tl.store(RAW + c_off, raw.to(RAW.dtype.element_ty), mask=m2)
    else:
        tl.store(OUT + q_off, tl.zeros([BH, BD], dtype=tl.float32).to(OUT.dtype.element_ty), mask=mq)
        tl.store(CUM_OUT + c_off, c0.to(CUM_OUT.dtype.element_ty), mask=m2)
        tl.store(RAW + c_off, tl.zeros([BS, BH], dtype=tl.float32).to(RAW.dtype.element_ty), mask=m2)


@triton.jit
def _bwd_kernel(
    Q, K, V, CUM, DECAY, ACTIVE, G_OUT, G_CUM,
    GQ, GK, GV, GCUM0, GDECAY_PART,
    S, H, DH,
    scale, inv_ln_base,
    HAS_ACTIVE: tl.constexpr, HAS_GCUM: tl.constexpr, BS: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    kv, m3, c_off, m2, q_off, mq, h2 = _tiles(n, S, H, DH, BS, BH, BD)
    hv = tl.arange(0, BH)
    g_cum = tl.zeros([BS, BH], dtype=tl.float32)  # (S,H) grad w.r.t. cum'
    if HAS_GCUM:
        g_cum = tl.load(G_CUM + c_off, mask=m2, other=0.0).to(tl.float32)
    run = True
    if HAS_ACTIVE:
        run = tl.load(ACTIVE + n) != 0
    if run:
        q = tl.load(Q + q_off, mask=mq, other=0.0).to(tl.float32)  # (H,dh)
        k = tl.load(K + kv, mask=m3, other=0.0).to(tl.float32)  # (S,H,dh)
        v = tl.load(V + kv, mask=m3, other=0.0).to(tl.float32)  # (S,H,dh)
        c0 = tl.load(CUM + c_off, mask=m2, other=0.0).to(tl.float32)  # (S,H)
        g_out = tl.load(G_OUT + q_off, mask=mq, other=0.0).to(tl.float32)  # (H,dh)
        decay = tl.load(DECAY + h2, mask=h2 < H, other=0.0).to(tl.float32)  # (1,H)
        _raw, c = _logits(q, k, c0, decay, scale)  # recomputed, not saved
        sig = 1.0 / (1.0 + tl.exp(-c))
        silu = c * sig
        w = tl.where(m2, tl.log(1.0 + silu) * inv_ln_base, 0.0)
        dw_dc = sig * (1.0 + c * (1.0 - sig)) / (1.0 + silu) * inv_ln_base  # d log1p(silu(c)) / dc
        g_w = tl.sum(v * g_out[None, :, :], axis=2)  # (S,H)
        g_c = tl.where(m2, g_w * dw_dc + g_cum, 0.0)  # (S,H)
        g_raw = g_c * scale
        tl.store(GQ + q_off, tl.sum(g_raw[:, :, None] * k, axis=0).to(GQ.dtype.element_ty), mask=mq)
        tl.store(GK + kv, (g_raw[:, :, None] * q[None, :, :]).to(GK.dtype.element_ty), mask=m3)
        tl.store(GV + kv, (w[:, :, None] * g_out[None, :, :]).to(GV.dtype.element_ty), mask=m3)
        tl.store(GCUM0 + c_off, (decay * g_c).to(GCUM0.dtype.element_ty), mask=m2)
        tl.store(GDECAY_PART + n * H + hv, tl.sum(g_c * (c0 - 1.0), axis=0), mask=hv < H)
    else:  # halted: cum passed through unchanged, nothing else was read
        z3 = tl.zeros([BS, BH, BD], dtype=tl.float32)
        tl.store(GQ + q_off, tl.zeros([BH, BD], dtype=tl.float32).to(GQ.dtype.element_ty), mask=mq)
        tl.store(GK + kv, z3.to(GK.dtype.element_ty), mask=m3)
        tl.store(GV + kv, z3.to(GV.dtype.element_ty), mask=m3)
        tl.store(GCUM0 + c_off, g_cum.to(GCUM0.dtype.element_ty), mask=m2)
        tl.store(GDECAY_PART + n * H + hv, tl.zeros([BH], dtype=tl.float32), mask=hv < H)


def _launch_shape(q: torch.Tensor, k: torch.Tensor):
    B, T, H, dh = q.shape
    S = k.shape[2]
    BS, BH, BD = triton.next_power_of_2(S), triton.next_power_of_2(H), triton.next_power_of_2(dh)
    warps = 4 if BS * BH * BD >= 2048 else 2  # one (S,H,dh) tile per program; measured in bench kernels
    return B * T, H, S, dh, BS, BH, BD, warps


def _active_bytes(active: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if active is None:
        return like  # never read: HAS_ACTIVE is False
    active = active.reshape(-1).contiguous()
    return active.view(torch.uint8) if active.dtype == torch.bool else active.to(torch.uint8)


def _cum_dtype(cum: torch.Tensor, q: torch.Tensor) -> torch.dtype:
    return torch.promote_types(cum.dtype, q.dtype)  # cum and raw in the wider of the two (autocast: fp32)


def _forward(q, k, v, cum, decay, base, active):
    """Launch the forward kernel: ``out (B,T,H,dh)``, the new ``cum (B,T,H,S)`` and ``raw (B,T,H,S)``."""
    q, k, v, cum = q.contiguous(), k.contiguous(), v.contiguous(), cum.contiguous()
    decay = decay.contiguous().float()
    N, H, S, dh, BS, BH, BD, warps = _launch_shape(q, k)
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)  # (B,T,H,dh)
    cum_out = torch.empty(cum.shape, device=cum.device, dtype=_cum_dtype(cum, q))  # (B,T,H,S)
    raw = torch.empty(cum.shape, device=cum.device, dtype=_cum_dtype(cum, q))  # (B,T,H,S)
    _fwd_kernel[(N,)](q, k, v, cum, decay, _active_bytes(active, q), out, cum_out, raw, S, H, dh,
                      1.0 / math.sqrt(dh), 1.0 / math.log(base),
                      HAS_ACTIVE=active is not None, BS=BS, BH=BH, BD=BD, num_warps=warps)
    return out, cum_out, raw


def _backward(q, k, v, cum, decay, base, active, g_out, g_cum):
    """Launch the backward kernel: the gradients w.r.t. q, k, v, cum and decay, each in its input's
    dtype, from those w.r.t. out and the new cum (``g_out`` None: zero; ``g_cum`` None: not read)."""
    q, k, v, cum = q.contiguous(), k.contiguous(), v.contiguous(), cum.contiguous()
    g_out = torch.zeros_like(q) if g_out is None else g_out.contiguous()
    decay_f = decay.contiguous().float()
    N, H, S, dh, BS, BH, BD, warps = _launch_shape(q, k)
    has_gcum = g_cum is not None
    g_cum = g_cum.contiguous() if has_gcum else q  # never read when HAS_GCUM is False
    gq = torch.empty(q.shape, device=q.device, dtype=q.dtype)  # (B,T,H,dh)
    gk = torch.empty(k.shape, device=q.device, dtype=k.dtype)  # (B,T,S,H,dh)
    gv = torch.empty(v.shape, device=q.device, dtype=v.dtype)  # (B,T,S,H,dh)
    gcum0 = torch.empty(cum.shape, device=q.device, dtype=cum.dtype)  # (B,T,H,S)
    gdec = torch.empty(N, H, device=q.device, dtype=torch.float32)  # (B*T,H) per-position partial sums
    _bwd_kernel[(N,)](q, k, v, cum, decay_f, _active_bytes(active, q), g_out, g_cum, gq, gk, gv, gcum0, gdec,
                      S, H, dh, 1.0 / math.sqrt(dh), 1.0 / math.log(base),
                      HAS_ACTIVE=active is not None, HAS_GCUM=has_gcum, BS=BS, BH=BH, BD=BD, num_warps=warps)
    return gq, gk, gv, gcum0, gdec.sum(0).to(decay.dtype)


# Eager: an autograd.Function, whose dispatch costs the host several times less per call than a
# custom op's (the K loop calls the step K times per batch, and a small step is bound by the host).
class _WorkspaceStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cum, decay, base, active):
        out, cum_out, raw = _forward(q, k, v, cum, decay, base, active)
        ctx.save_for_backward(q, k, v, cum, decay, active)
        ctx.base = base
        ctx.mark_non_differentiable(raw)  # raw: read by the halting rule only
        return out, cum_out, raw

    @staticmethod
    def backward(ctx, g_out, g_cum, _g_raw):
        q, k, v, cum, decay, active = ctx.saved_tensors
        return *_backward(q, k, v, cum, decay, ctx.base, active, g_out, g_cum), None, None


# Compiled: the same launches as two custom operators, which ``torch.compile`` keeps in its graph as
# single nodes (Dynamo cannot trace a Triton launch under the interpreter and would break the graph
# around it). Each op has a fake implementation that gives its outputs' shapes, dtypes and strides
# without running anything, and the forward op's autograd formula calls the backward op, so
# AOTAutograd traces both directions. (``torch.library.triton_op`` would let Inductor see the
# launches too, but it derives its fake implementation by tracing them, which Triton's interpreter
# cannot do on the CPU.)
@torch.library.custom_op("parallax_kernels::workspace_step", mutates_args=())
def _step_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cum: torch.Tensor, decay: torch.Tensor, base: float,
    active: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, cum, decay, base, active)


@_step_op.register_fake
def _step_fake(q, k, v, cum, decay, base, active):
    dtype = _cum_dtype(cum, q)
    return q.new_empty(q.shape), cum.new_empty(cum.shape, dtype=dtype), cum.new_empty(cum.shape, dtype=dtype)


@torch.library.custom_op("parallax_kernels::workspace_step_backward", mutates_args=())
def _step_backward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cum: torch.Tensor, decay: torch.Tensor, base: float,
    active: torch.Tensor | None, g_out: torch.Tensor, g_cum: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(q, k, v, cum, decay, base, active, g_out, g_cum)


@_step_backward_op.register_fake
def _step_backward_fake(q, k, v, cum, decay, base, active, g_out, g_cum):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), cum.new_empty(cum.shape), \
        decay.new_empty(decay.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, cum, decay, base, active = inputs
    ctx.save_for_backward(q, k, v, cum, decay, active)
    ctx.base = base
    ctx.mark_non_differentiable(output[2])  # raw: read by the halting rule only


def _op_backward(ctx, g_out, g_cum, _g_raw):
    q, k, v, cum, decay, active = ctx.saved_tensors
    g_out = torch.zeros_like(q) if g_out is None else g_out
    grads = torch.ops.parallax_kernels.workspace_step_backward(q, k, v, cum, decay, ctx.base, active, g_out, g_cum)
    return *grads, None, None


_step_op.register_autograd(_op_backward, setup_context=_setup_context)


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

    ``raw`` carries no gradient (the K loop reads it for halting only). Under ``torch.compile`` this
    is the custom op ``torch.ops.parallax_kernels.workspace_step``, which stays in the graph; eagerly
    it is an autograd.Function over the same two kernels.
    """
    if torch.compiler.is_compiling():
        return torch.ops.parallax_kernels.workspace_step(q, k, v, cum, decay, float(base), active)
    return _WorkspaceStep.apply(q, k, v, cum, decay, base, active)
