"""Max |difference| of the streaming covariance attention against SDPA (probe r = 0) and against the
materialised reference (forward and backward), float32, B=2, 8 query heads over 4 key/value heads
(GQA), T=128, dh=16, key blocks of 32.

    python examples/covariance_attention_parity.py
"""
import torch
import torch.nn.functional as F

from parallax_kernels.covariance_attention import covariance_attention, covariance_attention_ref

gen = torch.Generator().manual_seed(0)
B, Hq, Hk, T, dh = 2, 8, 4, 128, 16
q, r = (torch.randn(B, Hq, T, dh, generator=gen) for _ in range(2))
k, v = (torch.randn(B, Hk, T, dh, generator=gen) for _ in range(2))
pos = torch.arange(T)
sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
zero = (covariance_attention(q, k, v, torch.zeros_like(r), pos, block=32) - sdpa).abs().max().item()
leaves = [t.requires_grad_() for t in (q, k, v, r)]
want, got = covariance_attention_ref(q, k, v, r, pos), covariance_attention(q, k, v, r, pos, block=32)
up = torch.randn_like(want)
grads = zip(torch.autograd.grad(want, leaves, up), torch.autograd.grad(got, leaves, up))
print(f"r = 0, streaming vs SDPA:           {zero:.2e}")
print(f"streaming vs reference, forward:    {(want - got).abs().max().item():.2e}")
print(f"streaming vs reference, backward:   {max((a - b).abs().max().item() for a, b in grads):.2e}")
