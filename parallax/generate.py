"""Incremental generation (DESIGN.md §2.7): one new token at a time, every component cached.

Each token goes through the model's ``decode_step`` (the ``Model`` protocol). For a CWS model the
encoder's ``step`` makes x_t (B,1,d) from its window of recent embeddings; each expert's
``context_step`` updates its cache (the Mamba state, the probe's keys and values); the K loop
settles position t alone; the decoder's ``step`` reads its window of the last settled states. A
token therefore costs O(1) in T for the scan, O(T) for the probe, and one position's K loop,
where recomputing the prefix would settle all T positions again.

``recompute_logits`` is the reference the incremental path must agree with: the full forward
over the whole prefix, keeping the last position.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import ConfigError
from .protocols import Model


class IncrementalState:
    """A model's generation caches for one batch of sequences; ``feed`` advances them by one token."""

    def __init__(self, model: Model):
        self.model = model
        self.cache = None

    @torch.no_grad()
    def feed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tokens (B,1) at the next position -> (logits (B,V) for the position after, K (B,) it used or None)."""
        try:
            logits, k, self.cache = self.model.decode_step(tokens, self.cache)
        except NotImplementedError as e:
            raise ConfigError(f"model.type: {e}; generate from a model that has it (e.g. cws, transformer)") from None
        return logits, k


@torch.no_grad()
def recompute_logits(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The full forward over ``ids (B,T)``: (logits (B,V) of the last position, its K (B,))."""
    out = model(ids, k_max=model.k_max) if model.has_k_loop else model(ids)
    return out.logits[:, -1], (out.k[:, -1] if model.has_k_loop else None)


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
    k: list[int | None]  # K spent on the position whose state chose each generated id (None: no K loop)
    seconds: float  # wall time of the generated tokens (the prompt excluded)
    prompt_k: list[int | None] = field(default_factory=list)  # K of each prompt position
    logprob: list[float] = field(default_factory=list)  # log p(id) of each generated id under the model (temperature 1)
    interrupted: bool = False  # Ctrl-C cut generation short; ``ids`` holds what came before

    @property
    def tokens_per_s(self) -> float:
        return len(self.ids) / max(self.seconds, 1e-9)

    @property
    def k_mean(self) -> float | None:
        ks = [k for k in self.k if k is not None]
        return sum(ks) / len(ks) if ks else None


def generate(
    model: torch.nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    stop_id: int | None = None,
    cached: bool = True,
    on_token: Callable[[int, int | None], None] | None = None,
) -> Generation:
    """Continue ``prompt`` by up to ``max_new_tokens`` ids (stopping after ``stop_id``).

    ``cached=False`` recomputes the whole prefix for every token instead (the reference, and the
    baseline of ``parallax bench generate``). ``on_token(id, k)`` is called as each id is chosen, so a
    caller can stream them. Ctrl-C stops generation: what was generated comes back, with ``interrupted``.
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
            prompt_k.append(int(k[0]) if k is not None else None)
    start = time.perf_counter()
    out: list[int] = []
    ks: list[int] = []
    logprobs: list[float] = []
    interrupted = False
    try:
        for _ in range(max_new_tokens):
            if state is None:
                logits, k = recompute_logits(model, ids)
            nxt = sample(logits, temperature, top_k, gen)  # (1,1)
            logprob = float(torch.log_softmax(logits.float(), dim=-1)[0, int(nxt)])
            out.append(int(nxt))
            logprobs.append(logprob)
            ks.append(int(k[0]) if k is not None else None)
            if on_token is not None:
                on_token(out[-1], ks[-1])
            if stop_id is not None and out[-1] == stop_id:
                break
            ids = torch.cat([ids, nxt], dim=1)
            if state is not None and len(out) < max_new_tokens:
                logits, k = state.feed(nxt)
    except KeyboardInterrupt:  # keep what was generated; the caller says it was cut short
        interrupted = True
    return Generation(ids=out, k=ks, seconds=time.perf_counter() - start, prompt_k=prompt_k, logprob=logprobs,
                      interrupted=interrupted)
