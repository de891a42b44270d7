"""Retrieval: a test-time memory of (state, next observation) pairs behind an LSH index (v1, seed 000).

Seed 000's v1 retrieved from "an LSH retrieval index" and missed "test-time learning: the system
could not adapt the retrieval index from interaction". Here the index is written as the sequence
is read, in training and in inference alike, and its top matches become slots.

Per position t (token clock; the state is a projection of the observation):
    s_t       = W_k x_t                                            (B,T,dk) state
    code_t    = LSH(s_t): per table, the sign bits of s_t against fixed random planes
    index     = pairs (s_j, x_{j+1}), each written at position j+1, once x_{j+1} is seen
    matches   = entries in the index at position t that share a bucket with code_t in any table
    slot_t^i  = sigmoid(s_t·s_j / sqrt(dk)) W_v x_{j+1}      for the i-th best match j (zero if none)
The gate gives W_k a gradient through the scores; the bucket test itself is discrete.

- Causal: position t reads only pairs written at positions < t (an entry for pair j, written at
  j+1, is visible to t > j+1). ``context_step`` keeps the index in its cache and equals ``context``.
- Bounded: the index holds at most ``capacity`` pairs; the oldest is evicted first (FIFO), so at
  position t it holds the pairs written at positions t-capacity .. t-1.
- Reset between sequences, unless ``persist: true``: then the pairs of every sequence ``context``
  reads (training batches and evaluation alike, detached) are appended to a stored index, which
  the next sequence starts from, under the same bound. The stored index and the hash planes are
  buffers, so a checkpoint saves them and loading restores them exactly. With ``persist`` the
  expert is stateful across calls by design; generation (``context_step``) reads the stored
  index but does not write to it.
- Deterministic hashing: the planes are drawn from ``hash_seed`` alone, never from torch's global RNG.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

import parallax


class Retrieval(parallax.Expert):
    clock = "token"

    class Config(parallax.Spec):
        type: str = "retrieval"
        slots: int = Field(2, ge=1, description="best matches proposed, one slot each")
        capacity: int = Field(256, ge=1, description="most pairs the index holds; the oldest is evicted first")
        key_dim: int = Field(16, ge=1, description="width dk of the state s = W_k x that is hashed and matched")
        tables: int = Field(2, ge=1, description="LSH tables; a match in any table makes a candidate")
        bits: int = Field(4, ge=1, le=30, description="sign bits per table (2**bits buckets)")
        hash_seed: int = Field(0, description="seed of the random hash planes")
        persist: bool = Field(False, description="keep the index across sequences (and in checkpoints)")

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        self.cfg, self.slots, self.capacity = cfg, cfg.slots, cfg.capacity
        self.k_proj = nn.Linear(d_model, cfg.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        gen = torch.Generator().manual_seed(cfg.hash_seed)
        self.register_buffer("planes", torch.randn(cfg.tables, cfg.key_dim, cfg.bits, generator=gen))
        self.register_buffer("powers", 2 ** torch.arange(cfg.bits), persistent=False)
        # the stored index, oldest to newest, right-aligned: its last `stored` rows are valid
        self.register_buffer("mem_keys", torch.zeros(cfg.capacity, cfg.key_dim))
        self.register_buffer("mem_values", torch.zeros(cfg.capacity, d_model))
        self.register_buffer("stored", torch.zeros((), dtype=torch.long))

    # -- hashing and reading ------------------------------------------------------------------
    def hash(self, s: torch.Tensor) -> torch.Tensor:
        """States s (..., dk) -> bucket ids (..., tables), one per LSH table."""
        bits = torch.einsum("...k,lkb->...lb", s.float(), self.planes.float()) > 0  # (...,L,bits)
        return (bits.long() * self.powers).sum(-1)  # (...,L)

    def _read(self, s, code, keys, codes, values, visible) -> torch.Tensor:
        """Best matches of the states s (B,Tq,dk) among entries keys (B,M,dk), codes (B,M,L), values
        (B,M,d) visible per query as visible (B|1,Tq,M) -> slots (B,Tq,S,d)."""
        B, M = keys.shape[:2]
        if self.slots > M:  # fewer entries than slots: pad with entries that are never visible
            pad = self.slots - M
            keys = torch.cat([keys, keys.new_zeros(B, pad, keys.shape[-1])], 1)
            codes = torch.cat([codes, codes.new_full((B, pad, codes.shape[-1]), -1)], 1)
            values = torch.cat([values, values.new_zeros(B, pad, values.shape[-1])], 1)
            visible = torch.cat([visible, visible.new_zeros(*visible.shape[:2], pad)], -1)
        match = (code[:, :, None, :] == codes[:, None, :, :]).any(-1) & visible  # (B,Tq,M)
        score = torch.einsum("bqk,bmk->bqm", s, keys) / math.sqrt(s.shape[-1])  # (B,Tq,M)
        score = score.masked_fill(~match, float("-inf"))
        top, idx = score.topk(self.slots, dim=-1)  # (B,Tq,S)
        gate = torch.sigmoid(top)  # 0 where there is no match
        picked = torch.gather(values[:, None].expand(-1, idx.shape[1], -1, -1), 2,
                              idx[..., None].expand(-1, -1, -1, values.shape[-1]))  # (B,Tq,S,d)
        return gate[..., None] * self.v_proj(picked)

    def _stored(self, B: int, dtype: torch.dtype):
        """The stored index as batch entries: keys (B,P,dk), values (B,P,d)."""
        P = int(self.stored)
        keys = self.mem_keys[self.capacity - P:].to(dtype)[None].expand(B, -1, -1)
        values = self.mem_values[self.capacity - P:].to(dtype)[None].expand(B, -1, -1)
        return keys, values

    # -- the expert protocol ------------------------------------------------------------------
    def context(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        s = self.k_proj(x)  # (B,T,dk)
        code = self.hash(s)  # (B,T,L)
        # pair j = (s_j, x_{j+1}) is written at position j+1; the last position's pair is not complete
        nxt = torch.cat([x[:, 1:], x.new_zeros(B, 1, d)], 1)  # (B,T,d)
        written = torch.arange(1, T + 1, device=x.device)  # (T,)
        pk, pv = self._stored(B, x.dtype)  # (B,P,dk), (B,P,d)
        P = pk.shape[1]
        # stored entries, newest last, count as written at positions 0, -1, -2, ... before this sequence
        written = torch.cat([torch.arange(1 - P, 1, device=x.device), written])  # (P+T,)
        keys, values = torch.cat([pk, s], 1), torch.cat([pv, nxt], 1)  # (B,P+T,...)
        codes = self.hash(keys)  # (B,P+T,L)
        t = torch.arange(T, device=x.device)[:, None]  # (T,1)
        visible = ((written[None, :] <= t - 1) & (written[None, :] >= t - self.capacity))[None]  # (1,T,P+T)
        out = self._read(s, code, keys, codes, values, visible)  # (B,T,S,d)
        if self.cfg.persist:
            self._store(s[:, :-1].flatten(0, 1), x[:, 1:].flatten(0, 1))  # the batch's complete pairs, in order
        return out

    def context_step(self, x_t: torch.Tensor, cache):
        B = x_t.shape[0]
        s = self.k_proj(x_t)  # (B,1,dk)
        if cache is None:
            keys, values = self._stored(B, x_t.dtype)
            cache = {"keys": keys, "values": values, "prev": None}
        keys, values = cache["keys"], cache["values"]  # every entry is visible: all were written before t
        visible = torch.ones(B, 1, keys.shape[1], dtype=torch.bool, device=x_t.device)
        out = self._read(s, self.hash(s), keys, self.hash(keys), values, visible)  # (B,1,S,d)
        if cache["prev"] is not None:  # write the pair (s_{t-1}, x_t), then evict beyond capacity
            keys = torch.cat([keys, cache["prev"]], 1)[:, -self.capacity:]
            values = torch.cat([values, x_t], 1)[:, -self.capacity:]
        return out, {"keys": keys, "values": values, "prev": s}

    def propose(self, h_eff, ctx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return ctx  # (B,T,S,d)

    @torch.no_grad()
    def _store(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append pairs (N,dk), (N,d) to the stored index, keeping the newest ``capacity``."""
        P = int(self.stored)
        k = torch.cat([self.mem_keys[self.capacity - P:], keys.detach().to(self.mem_keys.dtype)])[-self.capacity:]
        v = torch.cat([self.mem_values[self.capacity - P:], values.detach().to(self.mem_values.dtype)])[-self.capacity:]
        n = k.shape[0]
        self.mem_keys[self.capacity - n:] = k
        self.mem_values[self.capacity - n:] = v
        self.stored.fill_(n)

    def reset(self) -> None:
        """Empty the stored index."""
        self.mem_keys.zero_()
        self.mem_values.zero_()
        self.stored.zero_()

    def diagnostics(self) -> dict[str, float]:
        return {"index_size": float(self.stored)} if self.cfg.persist else {}
