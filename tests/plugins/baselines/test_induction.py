"""The transformer learns an induction copy task: distinct random tokens, then the same tokens again.

Predicting the repeated half needs a previous-token head and an induction head in the next layer
(Olsson et al., 2022), so it exercises RoPE, the causal mask and the head layout together; a
two-layer model of width 32 without any observation window solves it in a few hundred steps.
(That no position sees a later token is tested on its own in test_transformer.py.)
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parallax import DataInfo
from parallax_plugins.baselines.transformer import Transformer

V, N, STEPS = 16, 8, 250  # vocabulary; length of the random half; optimizer steps


def copy_batch(gen: torch.Generator, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    # distinct tokens, so that the token after each one is unambiguous in the first half
    first = torch.rand(batch, V, generator=gen).argsort(dim=1)[:, :N]  # (B,N)
    inputs = torch.cat([first, first], dim=1)  # (B,2N)
    targets = torch.full_like(inputs, -100)
    targets[:, N:-1] = inputs[:, N + 1 :]  # in the repeat, every next token was seen N positions before
    return inputs, targets


@pytest.mark.slow  # about 10 s on one free core; 30 s on a loaded one
def test_two_layer_transformer_learns_to_copy():
    torch.manual_seed(0)
    model = Transformer(Transformer.Config(n_layer=2, n_head=2, n_kv_heads=2, n_embd=32), DataInfo(vocab_size=V))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(  # 20 warm-up steps, then a cosine to zero
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / STEPS)))
    gen = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        inputs, targets = copy_batch(gen)
        loss = F.cross_entropy(model(inputs).logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    inputs, targets = copy_batch(torch.Generator().manual_seed(123), batch=256)  # held-out sequences
    with torch.no_grad():
        logits = model(inputs).logits  # (B,2N,V)
    mask = targets != -100
    held_out = F.cross_entropy(logits[mask], targets[mask]).item()
    accuracy = (logits.argmax(-1)[mask] == targets[mask]).float().mean().item()
    assert held_out < 0.1 and accuracy > 0.99, (held_out, accuracy)  # a guess blind to context: ln 16 = 2.77 nats, 6 %
