"""Incremental generation (DESIGN.md §2.7): one new token at a time, every component cached.

Feeding token t: the encoder's ``step`` makes x_t (B,1,d) from its window of recent embeddings;
each expert's ``context_step`` updates its cache (the Mamba state, the probe's keys and values) and
returns this position's context; the K loop settles position t alone (``settle`` with x (B,1,d)
and ``positions = [t]``); the decoder's ``step`` reads its window of the last settled states. A
token therefore costs O(1) in T for the scan, O(T) for the probe, and one position's K loop,
where recomputing the prefix would settle all T positions again.

``recompute_logits`` is the reference the incremental path must agree with: the full forward
over the whole prefix, keeping the last position.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
import torch

from .errors import ConfigError
from .kloop import settle


class IncrementalState:
    """A CWS model's caches for one batch of sequences; ``feed`` advances them by one token."""

    def __init__(self, model: torch.nn.Module):
        for part in ("encoder", "experts", "workspace", "decoder", "halting"):
            if not hasattr(model, part):
                raise ConfigError(f"model.type: generation needs a CWS model (encoder, experts, workspace, decoder), not {type(model).__name__}")
        self.model = model
        self.t = 0  # absolute position of the next token
        self.encoder_cache = None
        self.expert_caches: list = [None] * len(model.experts)
        self.decoder_cache = None

    @torch.no_grad()
    def feed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B,1) at position t -> (logits (B,V) for position t+1, K (B,) position t used)."""
        m = self.model
        x, self.encoder_cache = m.encoder.step(tokens, self.encoder_cache)  # (B,1,d)
        contexts = []
        for i, expert in enumerate(m.experts):
            ctx, self.expert_caches[i] = expert.context_step(x, self.expert_caches[i])
            contexts.append(ctx)
        positions = torch.tensor([self.t], device=x.device)  # (1,) this position only
        res = settle(m.workspace, m.experts, contexts, x, positions, m.halting, m.k_max, m.live_steps)
        logits, self.decoder_cache = m.decoder.step(res.h, self.decoder_cache)  # (B,1,V)
        self.t += 1
        return logits[:, -1], res.k[:, -1]


@torch.no_grad()
def recompute_logits(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The full forward over ``ids (B,T)``: (logits (B,V) of the last position, its K (B,))."""
    out = model(ids, k_max=model.k_max)
    return out.logits[:, -1], out.k[:, -1]


def sample(logits: torch.Tensor, temperature: float, top_k: int | None, gen: torch.Generator | None) -> torch.Tensor:
    """logits (B,V) -> next ids (B,1). Temperature 0 is greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B,1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=gen)  # (B,1)


@dataclass
class Generation:
    ids: list[int]  # the generated ids, prompt excluded
    k: list[int]  # K spent on the position whose state chose each generated id
    seconds: float  # wall time of the generated tokens (the prompt excluded)
    prompt_k: list[int] = field(default_factory=list)  # K of each prompt position

    @property
    def tokens_per_s(self) -> float:
        return len(self.ids) / max(self.seconds, 1e-9)

    @property
    def k_mean(self) -> float:
        return sum(self.k) / max(len(self.k), 1)


def generate(
    model: torch.nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    stop_id: int | None = None,
    cached: bool = True,
) -> Generation:
    """Continue ``prompt`` by up to ``max_new_tokens`` ids (stopping after ``stop_id``).

    ``cached=False`` recomputes the whole prefix for every token instead (the reference, and the
    baseline of ``parallax bench generate``).
    """
    if not prompt:
        raise ConfigError("--prompt: the prompt is empty; give at least one character")
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt], device=device)  # (1,T)
    state = IncrementalState(model) if cached else None
    prompt_k: list[int] = []
    logits = k = None
    if state is not None:
        for t in range(len(prompt)):
            logits, k = state.feed(ids[:, t : t + 1])
            prompt_k.append(int(k[0]))
    start = time.perf_counter()
    out: list[int] = []
    ks: list[int] = []
    for _ in range(max_new_tokens):
        if state is None:
            logits, k = recompute_logits(model, ids)
        nxt = sample(logits, temperature, top_k, gen)  # (1,1)
        out.append(int(nxt))
        ks.append(int(k[0]))
        if stop_id is not None and out[-1] == stop_id:
            break
        ids = torch.cat([ids, nxt], dim=1)
        if state is not None and len(out) < max_new_tokens:
            logits, k = state.feed(nxt)
    return Generation(ids=out, k=ks, seconds=time.perf_counter() - start, prompt_k=prompt_k)
