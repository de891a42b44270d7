"""A decoder-only transformer language model: the baseline a CWS is measured against.

Shapes: B batch, T positions, d = n_embd, V vocabulary, H = n_head query heads, G = n_kv_heads
key/value heads, hd = d // H per-head width.

tokens (B,T) -> embedding (B,T,d) [-> token shift] -> n_layer pre-norm blocks (GQA attention with
RoPE, SwiGLU MLP) -> RMSNorm -> head (B,T,V), the head sharing the embedding table when ``tie`` is set.

``window: w > 1`` adds a short causal observation window over the embeddings,
x_t = e_t + sum_{j=1..w-1} W_j e_{t-j}: the token shift of H3/Based (a short causal convolution,
here with full d x d taps), and the same window the CWS's ``token`` encoder gives it
(``encoder.window: 3``), so that the two inductive biases can be compared apart. Off (1) by default.

A recipe may replace the embedding with any encoder plugin and the head with any decoder plugin
(``encoder: {type: image, patch: 4}``, ``decoder: {type: classifier}``): the components the CWS
uses, so the baseline runs on every modality the CWS does.

``step`` is the incremental path used for generation: one new token per call, with a KV cache
holding every layer's rotated keys and values for the positions already seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from parallax import ConfigError, DataInfo, Model, ModelOutput, RMSNorm, Spec, apply_rope, rope_angles
from parallax.model import build_component
from parallax.schema import Component
from parallax_kernels.covariance_attention import covariance_attention


def default_mlp_hidden(n_embd: int) -> int:
    """SwiGLU hidden width: 8/3 * n_embd (same parameters as a 4x GELU MLP), rounded up to a multiple of 8."""
    return 8 * math.ceil(8 * n_embd / 3 / 8)


class Attention(nn.Module):
    """Causal grouped-query attention with rotary positions.

    ``forward(x (B,T,d), cos, sin (T,hd/2), past) -> (y (B,T,d), (k, v) each (B,G,T_past+T,hd))``.
    ``past`` is the (k, v) of earlier positions, or None; with a past, T must be 1 (one new
    position attends to all earlier ones, so no mask is needed).

    ``variant: covariance`` is seed 004's covariance-corrected attention, out = mu_v - Cov_w(v, r·k)
    with a learned probe r = W_r x per query head; W_r starts at zero, so training starts from
    softmax attention (``parallax_kernels.covariance_attention``).
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_heads: int, variant: str = "softmax", block: int = 64):
        super().__init__()
        self.n_head, self.n_kv_heads, self.hd = n_head, n_kv_heads, n_embd // n_head
        self.wq = nn.Linear(n_embd, n_head * self.hd, bias=False)
        self.wkv = nn.Linear(n_embd, 2 * n_kv_heads * self.hd, bias=False)
        self.wo = nn.Linear(n_head * self.hd, n_embd, bias=False)
        self.wr = nn.Linear(n_embd, n_head * self.hd, bias=False) if variant == "covariance" else None
        self.block = block

    def forward(self, x, cos, sin, past=None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B,H,T,hd)
        k, v = self.wkv(x).view(B, T, 2, self.n_kv_heads, self.hd).permute(2, 0, 3, 1, 4)  # (B,G,T,hd) each
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            if T != 1:
                raise ValueError(f"incremental attention takes one position at a time, got T={T}")
            k = torch.cat([past[0], k], dim=2)  # (B,G,T_past+1,hd)
            v = torch.cat([past[1], v], dim=2)
        if self.wr is not None:
            r = self.wr(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B,H,T,hd)
            q_pos = torch.arange(k.shape[2] - T, k.shape[2], device=x.device)  # (T,) absolute query positions
            y = covariance_attention(q, k, v, r, q_pos, block=self.block)  # (B,H,T,hd); GQA inside
        else:
            # each group of H/G query heads shares one key/value head
            rep = self.n_head // self.n_kv_heads
            kq, vq = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B,H,T_kv,hd)
            y = F.scaled_dot_product_attention(q, kq, vq, is_causal=past is None)  # (B,H,T,hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.hd)  # (B,T,d)
        return self.wo(y), (k, v)


class TokenShift(nn.Module):
    """A causal window over the last ``window`` embeddings: (B,T,d) -> (B,T,d),
    x_t = e_t + sum_{j=1..window-1} W_j e_{t-j}, zero before the first position.

    ``step(e_t (B,1,d), past)`` is the incremental twin: ``past`` holds the last window-1
    embeddings, newest first (None to start), and the result equals ``forward`` at that position."""

    def __init__(self, n_embd: int, window: int):
        super().__init__()
        self.window = window
        self.taps = nn.ModuleList(nn.Linear(n_embd, n_embd, bias=False) for _ in range(window - 1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        x = e
        for j, tap in enumerate(self.taps, 1):
            x = x + tap(F.pad(e, (0, 0, j, 0))[:, : e.shape[1]])  # W_j e_{t-j}: (B,T,d), shifted right by j
        return x

    def step(self, e_t: torch.Tensor, past: list | None) -> tuple[torch.Tensor, list]:
        past = list(past or [])
        past += [torch.zeros_like(e_t)] * (self.window - 1 - len(past))
        x = e_t
        for tap, e_prev in zip(self.taps, past):
            x = x + tap(e_prev)  # (B,1,d)
        return x, ([e_t] + past)[: self.window - 1]


class SwiGLU(nn.Module):
    """``W3(SiLU(W1 x) * W2 x)``: (B,T,d) -> (B,T,d) through a gated hidden layer of width ``hidden``."""

    def __init__(self, n_embd: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(n_embd, hidden, bias=False)
        self.w2 = nn.Linear(n_embd, hidden, bias=False)
        self.w3 = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x):
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Block(nn.Module):
    """Pre-norm residual block: x + Attn(norm(x)), then x + MLP(norm(x)).

    ``forward(x (B,T,d), cos, sin, past=None) -> (x (B,T,d), kv)``; ``kv`` is this block's
    key/value cache after the call (see ``Attention``). Callers that do not decode ignore it.
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_heads: int, mlp_hidden: int, norm_eps: float,
                 dropout: float = 0.0, attention: str = "softmax", block: int = 64):
        super().__init__()
        self.norm1 = RMSNorm(n_embd, eps=norm_eps)
        self.attn = Attention(n_embd, n_head, n_kv_heads, attention, block)
        self.norm2 = RMSNorm(n_embd, eps=norm_eps)
        self.mlp = SwiGLU(n_embd, mlp_hidden)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x, cos, sin, past=None):
        a, kv = self.attn(self.norm1(x), cos, sin, past)
        x = x + self.drop(a)  # (B,T,d)
        x = x + self.drop(self.mlp(self.norm2(x)))  # (B,T,d)
        return x, kv


class TransformerOptions(Spec):
    """Options shared by the transformer and the models built from its blocks."""

    n_layer: int = Field(4, ge=1, description="number of blocks")
    n_head: int = Field(4, ge=1, description="query heads")
    n_kv_heads: int = Field(2, ge=1, description="key/value heads (GQA); must divide n_head")
    n_embd: int = Field(128, ge=1, description="model width d; must be divisible by n_head")
    mlp_hidden: int | None = Field(
        None, ge=1, description="SwiGLU hidden width (default 8/3 * n_embd, rounded up to a multiple of 8)")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon")
    rope_base: float = Field(10000.0, gt=0, description="RoPE frequency base")
    tie: bool = Field(True, description="share the token embedding table with the output head")
    attention: Literal["softmax", "covariance"] = Field(
        "softmax", description="softmax attention, or seed 004's covariance-corrected attention (mu_v - Cov_w(v, r·k))")
    block: int = Field(64, ge=1, description="key block of the streaming covariance attention")
    window: int = Field(1, ge=1, description="observation window over the embeddings: the token plus window-1 previous "
                        "ones through a token shift (3 gives the CWS encoder's window); 1: off")
    encoder: Component("encoders") | None = Field(  # type: ignore[valid-type]
        None, description="an encoder plugin in place of the token embedding, e.g. {type: image, patch: 4}")
    decoder: Component("decoders") | None = Field(  # type: ignore[valid-type]
        None, description="a decoder plugin in place of the output head, e.g. {type: classifier}")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                             "change n_embd or n_head")
        if self.n_head % self.n_kv_heads:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_heads ({self.n_kv_heads}); "
                             "set n_kv_heads to a divisor of n_head")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head width n_embd/n_head ({self.n_embd // self.n_head}) must be even for RoPE; "
                             "change n_embd or n_head")
        return self

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or default_mlp_hidden(self.n_embd)


def require_vocab(info: DataInfo, model: str) -> int:
    if not info.vocab_size:
        raise ConfigError(
            f"model.type: {model} reads tokens by default and this data has no vocabulary; give it an encoder and a "
            f"decoder for this data (e.g. model.encoder={{type: image, patch: 4}} model.decoder={{type: classifier}})"
        )
    return info.vocab_size


def build_io(model: nn.Module, cfg: TransformerOptions, info: DataInfo, registry, name: str) -> None:
    """Give ``model`` its input and output: ``encoder`` or the token table ``tok``, and ``decoder``
    or the LM ``head`` (None when tied to the token table)."""
    d = cfg.n_embd
    model.encoder = build_component("encoders", cfg.encoder, d, info, registry) if cfg.encoder else None
    model.tok = None if model.encoder is not None else nn.Embedding(require_vocab(info, name), d)
    model.shift = TokenShift(d, cfg.window) if cfg.window > 1 else None
    model.decoder = build_component("decoders", cfg.decoder, d, info, registry) if cfg.decoder else None
    if model.decoder is not None:
        model.head = None
        return
    V = require_vocab(info, name)
    tied = cfg.tie and (model.tok is not None or hasattr(model.encoder, "tied_weight"))
    model.head = None if tied else nn.Linear(d, V, bias=False)


def embed(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """inputs -> x (B,T,d), through the encoder plugin or the token table, then the token shift."""
    x = model.tok(inputs) if model.encoder is None else model.encoder(inputs)  # (B,T,d)
    return x if model.shift is None else model.shift(x)


def init_weights(module: nn.Module) -> None:
    """Normal(0, 0.02) for linear and embedding weights, as in GPT-2; encoder and decoder plugins
    keep their own initialisation."""
    for name, m in module.named_modules():
        if name.split(".")[0] in ("encoder", "decoder"):
            continue
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
    for m in module.modules():
        if isinstance(m, Attention) and m.wr is not None:
            nn.init.zeros_(m.wr.weight)  # r = 0: exact softmax attention at the start


def head_logits(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """h (B,T,d) -> logits: the decoder plugin's, ``model.head``'s (B,T,V), or the tied token table's."""
    if model.decoder is not None:
        return model.decoder(h)
    if model.head is not None:
        return model.head(h)
    table = model.tok.weight if model.tok is not None else model.encoder.tied_weight
    return F.linear(h, table)  # (B,T,V)


@dataclass
class KVCache:
    """Per-layer (k, v), each (B,G,T_seen,hd), the number of positions seen, and the token shift's
    last window-1 embeddings (newest first)."""

    layers: list = field(default_factory=list)
    pos: int = 0
    shift: list | None = None


class Transformer(Model):
    """Decoder-only transformer. ``forward(inputs (B,T)) -> ModelOutput(logits (B,T,V), k=None)``; with
    encoder and decoder plugins, whatever they read and write (e.g. images (B,C,H,W) -> logits (B,C))."""

    width_key = "n_embd"

    class Config(TransformerOptions):
        type: str = "transformer"

    def __init__(self, cfg: Transformer.Config, info: DataInfo, registry=None):
        super().__init__()
        self.cfg = cfg
        d = cfg.n_embd
        # tied: the head reads the embedding table, which is then saved once in checkpoints
        build_io(self, cfg, info, registry, "transformer")
        self.blocks = nn.ModuleList(
            Block(d, cfg.n_head, cfg.n_kv_heads, cfg.hidden, cfg.norm_eps, 0.0, cfg.attention, cfg.block)
            for _ in range(cfg.n_layer)
        )
        self.norm = RMSNorm(d, eps=cfg.norm_eps)
        init_weights(self)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Output head: (B,T,d) -> (B,T,V)."""
        return head_logits(self, h)

    def _rope(self, start: int, T: int, device):
        pos = torch.arange(start, start + T, device=device)
        return rope_angles(pos, self.cfg.n_embd // self.cfg.n_head, self.cfg.rope_base)  # (T,hd/2) each

    def forward(self, inputs: torch.Tensor) -> ModelOutput:
        x = embed(self, inputs)  # (B,T,d)
        cos, sin = self._rope(0, x.shape[1], inputs.device)
        for blk in self.blocks:
            x, _ = blk(x, cos, sin)  # (B,T,d)
        return ModelOutput(logits=self.logits(self.norm(x)), k=None)  # (B,T,V)

    @torch.no_grad()
    def step(self, tokens_t: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Feed one new token per row: ``tokens_t (B,1)`` and the cache from earlier calls (None to
        start) -> ``(logits (B,1,V), cache)``. The logits equal ``forward`` on the whole sequence at
        that position; the cache holds every layer's rotated keys and values seen so far."""
        if self.tok is None or self.decoder is not None:
            raise ConfigError("model: incremental decoding needs the token embedding and the LM head; "
                              "remove model.encoder and model.decoder to generate")
        cache = cache or KVCache(layers=[None] * len(self.blocks))
        cos, sin = self._rope(cache.pos, 1, tokens_t.device)
        x = self.tok(tokens_t)  # (B,1,d)
        shift = None
        if self.shift is not None:
            x, shift = self.shift.step(x, cache.shift)  # (B,1,d)
        layers = []
        for blk, past in zip(self.blocks, cache.layers):
            x, kv = blk(x, cos, sin, past)  # (B,1,d)
            layers.append(kv)
        return self.logits(self.norm(x)), KVCache(layers=layers, pos=cache.pos + 1, shift=shift)  # (B,1,V)

    def decode_step(self, tokens_t: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, None, KVCache]:
        """The ``Model`` protocol's generation step: ``step``, with no K loop."""
        logits, cache = self.step(tokens_t, cache)  # (B,1,V)
        return logits[:, -1], None, cache
