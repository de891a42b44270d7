"""Covariance-corrected softmax attention that streams over keys (seed 004: "re-uses the same memory
stream as FlashAttention").

The forward walks the keys in blocks of ``block`` and keeps, per query, online-softmax running
statistics: the running max m, l = sum exp(logit - m), and the exp-weighted sums of v, s and v*s
(s_ij = r_i·k_j). At the end mu_v = sum(e v)/l, mean_s = sum(e s)/l, E[v s] = sum(e v s)/l, and
out = mu_v - (E[v s] - mu_v * mean_s). The backward recomputes each block's weights from the
saved log-sum-exp, so neither pass holds a (Tq,Tk) tensor: memory is O(T·dh) plus one
(Tq,block) tile, as in FlashAttention.

Gradients, per query with upstream g and w_j = softmax weight, ms = mean_s:
    dv_j     = w_j (1 + ms - s_j) g
    ds_j     = w_j (g·mu - g·v_j)                       -> dr += ds_j k_j, dk_j += ds_j r
    dw_j     = (g·v_j)(1 + ms - s_j) + s_j (g·mu)
    dlogit_j = w_j (dw_j - D),  D = sum_j w_j dw_j = (g·mu)(1 + 2 ms) - g·E[v s]
and dlogit flows to q and k through the 1/sqrt(dh) scale.

Shapes as in ``naive.py``: q, r (B,Hq,Tq,dh); k, v (B,Hk,Tk,dh); q_pos (Tq,).
"""
from __future__ import annotations

import math

import torch


def _grouped(t: torch.Tensor, hk: int) -> torch.Tensor:
    """(B,Hq,Tq,dh) -> (B,Hk,G*Tq,dh): the G query heads sharing a key/value head become more rows."""
    B, Hq, Tq, dh = t.shape
    return t.reshape(B, hk, (Hq // hk) * Tq, dh)


class _CovarianceAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, r, q_pos, block: int):
        B, Hq, Tq, dh = q.shape
        Hk, Tk = k.shape[1], k.shape[2]
        scale = 1.0 / math.sqrt(dh)
        qg, rg = _grouped(q, Hk), _grouped(r, Hk)  # (B,Hk,Rq,dh), Rq = G*Tq
        pos = q_pos.repeat(Hq // Hk)  # (Rq,) position of each grouped row
        acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        qa, ra = qg.to(acc), rg.to(acc)
        Rq = qg.shape[2]
        m = torch.full((B, Hk, Rq, 1), float("-inf"), dtype=acc, device=q.device)
        l = torch.zeros(B, Hk, Rq, 1, dtype=acc, device=q.device)
        sum_v = torch.zeros(B, Hk, Rq, dh, dtype=acc, device=q.device)
        sum_s = torch.zeros(B, Hk, Rq, 1, dtype=acc, device=q.device)
        sum_vs = torch.zeros(B, Hk, Rq, dh, dtype=acc, device=q.device)
        for start in range(0, Tk, block):
            kb, vb = k[:, :, start:start + block].to(acc), v[:, :, start:start + block].to(acc)  # (B,Hk,b,dh)
            visible = torch.arange(start, start + kb.shape[2], device=q.device)[None, :] <= pos[:, None]  # (Rq,b)
            logits = (qa @ kb.transpose(-1, -2) * scale).masked_fill(~visible, float("-inf"))  # (B,Hk,Rq,b)
            m_new = torch.maximum(m, logits.amax(-1, keepdim=True))
            safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows with nothing visible yet
            alpha = torch.exp(m - safe)  # rescales what was accumulated under the old max
            e = torch.exp(logits - safe)  # (B,Hk,Rq,b)
            s = ra @ kb.transpose(-1, -2)  # (B,Hk,Rq,b)
            es = e * s
            l = l * alpha + e.sum(-1, keepdim=True)
            sum_v = sum_v * alpha + e @ vb
            sum_s = sum_s * alpha + es.sum(-1, keepdim=True)
            sum_vs = sum_vs * alpha + es @ vb
            m = m_new
        mu, ms, mvs = sum_v / l, sum_s / l, sum_vs / l  # (B,Hk,Rq,dh), (B,Hk,Rq,1), (B,Hk,Rq,dh)
        out = mu - (mvs - mu * ms)  # (B,Hk,Rq,dh)
        lse = m + torch.log(l)  # (B,Hk,Rq,1)
        ctx.save_for_backward(q, k, v, r, q_pos, lse, mu, ms, mvs)
        ctx.block = block
        return out.reshape(B, Hq, Tq, dh).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, r, q_pos, lse, mu, ms, mvs = ctx.saved_tensors
        block = ctx.block
        B, Hq, Tq, dh = q.shape
        Hk, Tk = k.shape[1], k.shape[2]
        scale = 1.0 / math.sqrt(dh)
        acc = mu.dtype
        qg, rg = _grouped(q, Hk).to(acc), _grouped(r, Hk).to(acc)  # (B,Hk,Rq,dh)
        g = _grouped(grad_out, Hk).to(acc)  # (B,Hk,Rq,dh)
        pos = q_pos.repeat(Hq // Hk)
        g_mu = (g * mu).sum(-1, keepdim=True)  # (B,Hk,Rq,1)
        D = g_mu * (1 + 2 * ms) - (g * mvs).sum(-1, keepdim=True)  # (B,Hk,Rq,1)
        dq, dr = torch.zeros_like(qg), torch.zeros_like(rg)
        dk, dv = torch.zeros(k.shape, dtype=acc, device=k.device), torch.zeros(v.shape, dtype=acc, device=v.device)
        for start in range(0, Tk, block):
            kb, vb = k[:, :, start:start + block].to(acc), v[:, :, start:start + block].to(acc)  # (B,Hk,b,dh)
            visible = torch.arange(start, start + kb.shape[2], device=q.device)[None, :] <= pos[:, None]  # (Rq,b)
            logits = (qg @ kb.transpose(-1, -2) * scale).masked_fill(~visible, float("-inf"))
            w = torch.exp(logits - lse)  # (B,Hk,Rq,b)
            s = rg @ kb.transpose(-1, -2)  # (B,Hk,Rq,b)
            gv = g @ vb.transpose(-1, -2)  # (B,Hk,Rq,b): g·v_j
            coef = w * (1 + ms - s)  # (B,Hk,Rq,b)
            ds = w * (g_mu - gv)
            dw = gv * (1 + ms - s) + s * g_mu
            dlogit = w * (dw - D) * scale
            dv[:, :, start:start + block] = coef.transpose(-1, -2) @ g
            dk[:, :, start:start + block] = ds.transpose(-1, -2) @ rg + dlogit.transpose(-1, -2) @ qg
            dr += ds @ kb
            dq += dlogit @ kb
        shape = (B, Hq, Tq, dh)
        return (dq.reshape(shape).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dr.reshape(shape).to(r.dtype),
                None, None)


def covariance_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
                         q_pos: torch.Tensor, block: int = 64) -> torch.Tensor:
    """q, r (B,Hq,Tq,dh); k, v (B,Hk,Tk,dh); q_pos (Tq,) -> out (B,Hq,Tq,dh), streaming over key blocks."""
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    return _CovarianceAttention.apply(q, k, v, r, q_pos, block)
