"""Model assembly: encoder -> experts -> K-loop workspace -> motor decoder (DESIGN.md §2).

``CWSModel`` knows components only by the registry names its recipe gives; it imports no
plugin. ``build_model`` instantiates any registered model type from a validated recipe.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from .errors import ConfigError
from .kloop import COMPACT_BELOW, settle
from .protocols import DataInfo, Model, ModelOutput
from .registry import Registry, get_registry
from .schema import MAX_K, Component, Spec


def build_component(kind: str, cfg: Spec, d_model: int, info: DataInfo, registry: Registry | None = None,
                    where: str | None = None):
    """Instantiate the ``kind`` component named by ``cfg.type`` with its validated options.

    ``where`` is the component's key path in the recipe (``model.experts.1``): a plugin's error that
    names its option as ``TYPE.option`` is reported at that path, where the user can find it.
    """
    cls = (registry or get_registry()).get(kind, cfg.type)
    with at_path(cfg.type, where):
        return cls(cfg, d_model, info)


@contextmanager
def at_path(type_name: str, where: str | None):
    """Report a component's ``ConfigError`` that names its option as ``TYPE.option`` at its recipe path."""
    try:
        yield
    except ConfigError as e:
        msg = str(e)
        if where and msg.startswith(f"{type_name}."):
            raise ConfigError(f"{where}.{msg[len(type_name) + 1:]}") from None
        if where and msg.startswith(f"{type_name}:"):
            raise ConfigError(f"{where}:{msg[len(type_name) + 1:]}") from None
        raise


def build_model(cfg: Spec, info: DataInfo, registry: Registry | None = None) -> nn.Module:
    registry = registry or get_registry()
    cls = registry.get("models", cfg.type, where="model.type")
    return cls(cfg, info, registry)


def poisson_k(mean: float, sigma: float) -> int:
    """One K draw from a log-normal Poisson (Geiping et al. 2025, "Huginn", recurrent-pretraining).

    tau ~ Normal(log(mean) - sigma^2 / 2, sigma); K ~ Poisson(exp(tau)) + 1. The -sigma^2/2 makes
    E[exp(tau)] = mean; the heavy tail trains some batches deep while most stay cheap. torch's RNG,
    so the draw is part of the seeded, checkpointed run state."""
    tau = torch.normal(torch.tensor(math.log(mean) - sigma ** 2 / 2), torch.tensor(float(sigma)))
    return int(torch.poisson(tau.exp()).item()) + 1


@dataclass
class CWSCache:
    """A CWS model's generation caches for one batch of sequences (``decode_step``)."""

    t: int = 0  # absolute position of the next token
    encoder: Any = None
    experts: list = field(default_factory=list)
    decoder: Any = None


class CWSModel(Model):
    """The Central Workspace model.

    inputs (B,T) tokens or (B,C,H,W) images -> encoder x (B,T,d) -> each expert's context ->
    K-loop settle (B,T,d) with per-position K (B,T) -> decoder logits.
    """

    has_k_loop = True
    takes_targets = True  # a learned halting rule labels its head from them
    compiled_k_loop = False  # run the frozen steps as one compiled graph (``parallax.compiling``)

    class Config(Spec):
        type: str = "cws"
        d_model: int = Field(64, gt=0, description="workspace width d")
        k_max: int = Field(8, ge=1, le=MAX_K, description="maximum K steps per position")
        live_steps: int = Field(1, ge=1, description="steps with gradient at the end of the loop")
        train_k: Literal["max", "uniform", "ramp", "grow", "poisson"] = Field(
            "max",
            description="K budget of each training batch: k_max; uniform in [live_steps, k_max]; ramp: "
            "uniform in [live_steps, cap] with cap rising linearly to k_max over k_ramp_steps; grow: the cap "
            "itself, a depth curriculum (every batch gets the whole cap, which a halting rule may stop short "
            "of); or poisson: "
            "Huginn's log-normal Poisson with mean k_mean and spread k_sigma, clipped to [live_steps, k_max]. "
            "Evaluation and generation always use k_max.",
        )
        k_ramp_steps: int = Field(1000, ge=1, description="training batches over which the ramp reaches k_max")
        k_ramp_from: int | None = Field(
            None, ge=1,
            description="train_k ramp or grow: the cap it starts from (default live_steps), a warm-up of k_max")
        k_ramp_hold: int = Field(
            0, ge=0, description="train_k ramp or grow: training batches the cap stays at k_ramp_from before it rises")
        k_mean: float | None = Field(None, gt=0, description="train_k poisson: mean K r (default k_max / 2)")
        k_sigma: float = Field(0.5, ge=0, description="train_k poisson: sigma of log(rate)")
        compact_below: float = Field(
            COMPACT_BELOW, ge=0, le=1,
            description="pack the still-settling positions of the whole batch into one list and run the frozen "
            "K steps on it alone once they are fewer than this fraction of the block being computed, and again "
            "as more halt (1: whenever one halts, so exactly the frozen steps are computed; 0 never packs: "
            "halted positions are only masked)",
        )
        halting: Component("halting_rules") = Field(  # type: ignore[valid-type]
            description="when a position stops its K loop")
        encoder: Component("encoders") = Field(  # type: ignore[valid-type]
            description="raw input -> observations (B,T,d)")
        experts: list[Component("experts")] = Field(  # type: ignore[valid-type]
            min_length=1, description="the experts that propose into the workspace, each with its slots")
        workspace: Component("workspaces") = Field(description="the K-step inner loop")  # type: ignore[valid-type]
        decoder: Component("decoders") = Field(description="settled states -> outputs")  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _live_within_k(self):
            if self.live_steps > self.k_max:
                raise ValueError(f"live_steps ({self.live_steps}) must be <= k_max ({self.k_max})")
            if self.k_ramp_from is not None and not self.live_steps <= self.k_ramp_from <= self.k_max:
                raise ValueError(f"k_ramp_from ({self.k_ramp_from}) must lie in [live_steps, k_max] = "
                                 f"[{self.live_steps}, {self.k_max}]")
            return self

    def __init__(self, cfg: CWSModel.Config, info: DataInfo, registry: Registry | None = None):
        super().__init__()
        registry = registry or get_registry()
        self.cfg = cfg
        d = cfg.d_model
        self.encoder = build_component("encoders", cfg.encoder, d, info, registry, "model.encoder")
        self.experts = nn.ModuleList(build_component("experts", e, d, info, registry, f"model.experts.{i}")
                                     for i, e in enumerate(cfg.experts))
        self.workspace = build_component("workspaces", cfg.workspace, d, info, registry, "model.workspace")
        with at_path(cfg.halting.type, "model.halting"):
            rule = registry.get("halting_rules", cfg.halting.type)
            # a rule with parameters is an nn.Module: assigned here it is a submodule, trained and saved
            self.halting = rule(cfg.halting, d) if issubclass(rule, nn.Module) else rule(cfg.halting)
        self.decoder = build_component("decoders", cfg.decoder, d, info, registry, "model.decoder")
        self._tied_to = [self.encoder.tied_weight]  # a plain list: not a second registration of the table
        self.decoder.tie(self._tied_to[0])
        self.k_max = cfg.k_max
        self.live_steps = cfg.live_steps
        # training batches seen; a buffer so that checkpoints carry the K schedule's position
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    def training_k(self) -> int:
        """The K budget of one training batch under ``train_k`` (DESIGN.md §2.5 holds for each)."""
        self.batches_seen += 1
        lo, cap = self.live_steps, self.k_max
        if self.cfg.train_k == "max":
            return cap
        if self.cfg.train_k == "poisson":
            return min(max(poisson_k(self.cfg.k_mean or self.k_max / 2, self.cfg.k_sigma), lo), cap)
        if self.cfg.train_k in ("ramp", "grow"):
            # held at the start for k_ramp_hold batches, then linear to k_max over k_ramp_steps
            start = self.cfg.k_ramp_from or lo
            frac = min(1.0, max(0.0, float(self.batches_seen - self.cfg.k_ramp_hold) / self.cfg.k_ramp_steps))
            cap = start + int(frac * (self.k_max - start))
            if self.cfg.train_k == "grow":
                return cap
        # torch's RNG, so the draw is part of the seeded, checkpointed run state
        return int(torch.randint(lo, cap + 1, ()).item())

    def forward(self, inputs: torch.Tensor, k_max: int | None = None, trace: bool = False,
                targets: torch.Tensor | None = None) -> ModelOutput:
        """inputs (B,T) -> logits (B,T,V) and each position's K (B,T). ``targets`` (B,T), in training:
        the loss's targets (-100 where unscored), handed to a learned halting rule's loss."""
        if k_max is None and self.training:
            k_max = self.training_k()
        x, positions, contexts = self._observe(inputs)
        # in training, a rule that judges frozen states by their answers (``memo``) gets the decoder and targets
        given = {"decode": self.decoder, "targets": targets} if self.training and targets is not None else None
        res = self._settle(x, positions, contexts, k_max or self.k_max, trace, memo=given)
        logits = self.decoder(res.h)
        stats: dict[str, Any] = {"work": res.work}
        if self.training and self.halting is not None:
            aux = self.halting.loss(res.memo, res.h_frozen, self.decoder, targets)
            if aux is not None:  # the trainer adds it to the task loss
                stats["aux_loss"] = aux
        if trace:
            stats["trace"] = res.trace
        return ModelOutput(logits=logits, k=res.k, stats=stats)

    def _observe(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """What the K loop reads: observations x (B,T,d), their positions (T,), each expert's context."""
        table = self.encoder.tied_weight
        if table is not self._tied_to[0]:  # FSDP swaps in the gathered parameter: the head follows it
            self._tied_to[0] = table
            self.decoder.tie(table)
        x = self.encoder(inputs)  # (B,T,d)
        positions = torch.arange(x.shape[1], device=x.device)  # (T,)
        return x, positions, [e.context(x) for e in self.experts]

    def _settle(self, x, positions, contexts, k_max: int, trace: bool = False, memo: dict | None = None):
        """The K loop under the model's current halting rule (None within ``fixed_k``)."""
        return settle(self.workspace, self.experts, contexts, x, positions, self.halting, k_max, self.live_steps,
                      trace=trace, compact_below=self.cfg.compact_below, compiled=self.compiled_k_loop, memo=memo)

    def compile_in_place(self) -> None:
        """Compile the K steps, keeping the module tree and the state dict: the frozen steps as one masked
        graph with a host sync every few steps (``kloop._frozen``), the live step with its
        backward. The loop itself stays Python, so a batch's K budget and the halting rule's decisions
        never recompile. The encoder, the experts' contexts and the decoder stay eager: compiling them
        too was measured not to pay on the CPU (docs/benchmarks.md, "Compiled K loop")."""
        self.compiled_k_loop = True

    # -- the Model protocol's K-loop and generation methods ---------------------------------------
    @contextmanager
    def fixed_k(self, k: int | None = None):
        saved = self.halting, self.k_max
        self.halting, self.k_max = None, k or self.k_max
        try:
            yield self
        finally:
            self.halting, self.k_max = saved

    def k_loop(self, inputs: torch.Tensor):
        x, positions, contexts = self._observe(inputs)
        return lambda: self._settle(x, positions, contexts, self.k_max)

    @torch.no_grad()
    def trajectory(self, inputs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, positions, contexts = self._observe(inputs)
        n_slots = sum(e.slots for e in self.experts)
        hs = [self.workspace.init_state(x, n_slots).h]
        trace = None
        for j in range(1, k + 1):  # each budget j from scratch: h_j is the state after exactly j steps
            res = settle(self.workspace, self.experts, contexts, x, positions, None, j, min(self.live_steps, j),
                         trace=j == k, compact_below=0.0)
            hs.append(res.h)
            trace = res.trace
        return torch.stack(hs), torch.stack(trace) if trace else torch.zeros(0, *x.shape[:2])

    @torch.no_grad()
    def decode_step(self, tokens_t: torch.Tensor,
                    cache: CWSCache | None) -> tuple[torch.Tensor, torch.Tensor, CWSCache]:
        """DESIGN.md §2.7: the encoder's ``step`` makes x_t (B,1,d) from its window of recent inputs;
        each expert's ``context_step`` updates its cache (the Mamba state, the probe's keys and values);
        the K loop settles position t alone; the decoder's ``step`` reads its window of settled states."""
        cache = cache or CWSCache(experts=[None] * len(self.experts))
        x, enc = self.encoder.step(tokens_t, cache.encoder)  # (B,1,d)
        contexts, expert_caches = [], []
        for expert, c in zip(self.experts, cache.experts):
            ctx, c = expert.context_step(x, c)
            contexts.append(ctx)
            expert_caches.append(c)
        positions = torch.tensor([cache.t], device=x.device)  # (1,) this position only
        res = self._settle(x, positions, contexts, self.k_max)
        logits, dec = self.decoder.step(res.h, cache.decoder)  # (B,1,V)
        return logits[:, -1], res.k[:, -1], CWSCache(cache.t + 1, enc, expert_caches, dec)
