"""Memory bank: a token-clocked expert whose slots are read from a learned bank (the v2 SC of seed 003).

The bank is ``entries`` learned vectors of width d (128 in v2). Each position t reads it with
``slots`` queries projected from its own observation x_t, one softmax over the bank per query:
    a_t^s     = softmax_n(q^s(x_t) · bank_n / sqrt(d))            (B,T,S,N)
    slot_t^s  = W_o sum_n a_t^s[n] bank_n                           (B,T,S,d)
A proposal reads x_t alone, so it is causal by construction and ``context_step`` (one position)
equals ``context`` (all positions) exactly; there is no cache.

Seed 003's observation is that the bank collapses: "all 128 embeddings had drifted to within cosine
0.94 of each other. The attention distribution was nearly uniform. Removing any subset of the
embeddings had negligible effect". ``diagnostics()`` reports what that sentence measures (the mean
pairwise cosine of the entries, and the entropy of the attention over the bank in the last
forward, as a fraction of its maximum log N), and ``ablate(fraction, seed)`` drops a random subset
of entries from the attention, for ``parallax bench ablation``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import Field
from torch import nn

import parallax


class MemoryBank(parallax.Expert):
    clock = "token"

    class Config(parallax.Spec):
        type: str = "memory_bank"
        slots: int = Field(2, ge=1, description="read queries, one slot each")
        entries: int = Field(128, ge=2, description="learned bank entries N")
        init: Literal["diverse", "collapsed"] = Field(
            "diverse", description="diverse: independent random entries; collapsed: one random vector for every "
            "entry, plus 1% noise (starts at the state seed 003 ended in, to ask whether collapse hurts)",
        )

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        self.slots, self.entries, self.d = cfg.slots, cfg.entries, d_model
        if cfg.init == "diverse":
            bank = torch.randn(cfg.entries, d_model)  # (N,d) unit-variance rows, nearly orthogonal
        else:
            bank = torch.randn(1, d_model) + 0.01 * torch.randn(cfg.entries, d_model)  # (N,d) cosine ~ 1
        self.bank = nn.Parameter(bank)
        self.q_proj = nn.Linear(d_model, cfg.slots * d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        # entries excluded from the read (the ablation); not saved: a checkpoint holds the whole bank
        self.register_buffer("keep", torch.ones(cfg.entries, dtype=torch.bool), persistent=False)
        self._entropy: float | None = None

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q = self.q_proj(x).view(B, T, self.slots, d)  # (B,T,S,d)
        logits = torch.einsum("btsd,nd->btsn", q, self.bank.to(x.dtype)) / math.sqrt(d)  # (B,T,S,N)
        return torch.softmax(logits.masked_fill(~self.keep, float("-inf")).float(), dim=-1).to(x.dtype)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        a = self._attention(x)  # (B,T,S,N)
        with torch.no_grad():  # the diagnostic of the last read, in nats
            p = a.float()
            self._entropy = float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean())
        read = torch.einsum("btsn,nd->btsd", a, self.bank.to(x.dtype))  # (B,T,S,d)
        return self.o_proj(read)  # the proposals themselves

    def context_step(self, x_t: torch.Tensor, cache):
        return self.context(x_t), None  # a position reads only its own observation

    def propose(self, h_eff, ctx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return ctx  # (B,T,S,d)

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """bank_cosine: mean cosine over distinct pairs of entries (1 = collapsed to one direction);
        bank_entropy: entropy of the last read's attention over the bank / log N (1 = uniform)."""
        unit = torch.nn.functional.normalize(self.bank.float(), dim=-1)  # (N,d)
        cos = unit @ unit.T  # (N,N)
        n = self.entries
        out = {"bank_cosine": float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))}
        if self._entropy is not None:
            out["bank_entropy"] = self._entropy / math.log(int(self.keep.sum()))
        return out

    @contextmanager
    def ablate(self, fraction: float, seed: int = 0):
        """Within the block, a random ``fraction`` of the entries (at least one kept) is left out of every read."""
        gen = torch.Generator().manual_seed(seed)
        drop = min(int(round(fraction * self.entries)), self.entries - 1)
        keep = torch.ones(self.entries, dtype=torch.bool)
        keep[torch.randperm(self.entries, generator=gen)[:drop]] = False
        saved = self.keep.clone()
        self.keep.copy_(keep)
        try:
            yield drop
        finally:
            self.keep.copy_(saved)
