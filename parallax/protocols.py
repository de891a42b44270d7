"""The protocols: a registered ``Model``, the four components of a CWS model, halting rules and data sources.

Shapes: B batch, T positions, S slots, d model width, H workspace heads, dh = d // H.
Every component is an ``nn.Module`` subclass with a nested pydantic ``Config`` (its recipe
options) and a constructor ``__init__(self, cfg, d_model, info)`` (``info`` a ``DataInfo``). Plugins subclass
these bases; the core only ever talks to them through the methods below.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from .schema import Spec

Clock = Literal["token", "h"]


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data to size itself."""

    vocab_size: int | None = None  # token vocabulary, for token encoders and LM heads
    num_classes: int | None = None  # for classifier decoders
    input_shape: tuple[int, ...] | None = None  # one example's raw shape, e.g. (C,H,W)


@dataclass
class ModelOutput:
    """``logits (B,T,V)`` or ``(B,C)``; ``k (B,T)`` the K steps each position used (None for non-CWS)."""

    logits: torch.Tensor
    k: torch.Tensor | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class Model(nn.Module):
    """What every registered model type provides (``register_models``; built by ``parallax.build_model``).

    ``__init__(cfg, info, registry)`` takes its validated ``Config``, the ``DataInfo`` and the registry
    (to build components by name). ``forward(inputs) -> ModelOutput``: logits, and for a model with a
    K loop the K of every position (``k (B,T)``); a K-loop model also takes ``forward(inputs, k_max=K)``.

    The core asks a model only through this protocol:
    - ``has_k_loop``: whether ``forward`` settles a K loop; then ``k_max`` and ``live_steps`` are its
      budget, ``fixed_k(k)`` a context in which every position takes exactly ``k`` steps (benchmarks
      compare halting against it), and ``trajectory(inputs, k)`` gives the states h_0..h_k;
    - ``decode_step(tokens_t, cache)``: incremental generation of one new position per row;
    - ``width_key``: the option under ``model`` that sets its width, which ``bench compare
      --match-params`` may change (None: never resized);
    - ``takes_targets``: whether ``forward`` also takes ``targets=`` ``(B,T)`` long, the training
      targets with -100 where nothing is scored; the trainer passes them in training, for a learned
      halting rule's labels (positions without a target are "safe to stop"; HRM-style labels also ask
      whether the answer is right);
    - ``compile_in_place()``, optional: compile the parts of the model that pay, keeping its module tree
      and state dict (``train.compile``); a model without it is wrapped whole by ``torch.compile``.
    """

    Config: ClassVar[type[Spec]]
    has_k_loop: ClassVar[bool] = False
    width_key: ClassVar[str | None] = None
    takes_targets: ClassVar[bool] = False
    k_max: int | None = None
    live_steps: int = 1

    def forward(self, inputs: torch.Tensor) -> ModelOutput:  # (B,T) or (B,C,H,W) -> logits
        raise NotImplementedError

    def decode_step(self, tokens_t: torch.Tensor, cache: Any | None) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        """tokens_t (B,1) at the next position, the cache of earlier calls (None to start) ->
        (logits (B,V) for the position after it, K (B,) it used or None, the new cache). Must agree
        with ``forward`` over the whole sequence at that position."""
        raise NotImplementedError(f"{type(self).__name__} does not support incremental generation")

    @contextmanager
    def fixed_k(self, k: int | None = None):
        """Within the block every position runs exactly ``k`` steps (``k_max`` when None), with no halting."""
        raise NotImplementedError(f"{type(self).__name__} has no K loop")
        yield  # pragma: no cover

    def k_loop(self, inputs: torch.Tensor):
        """Run everything ``forward`` runs before the K loop (the encoder, the experts' contexts) and return a
        function of no arguments that runs the K loop alone, under the model's current halting and budget:
        benchmarks time the K loop apart from the rest with it."""
        raise NotImplementedError(f"{type(self).__name__} has no K loop")

    def trajectory(self, inputs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The states h_0..h_k (k+1,B,T,d) of ``k`` fixed steps, and the raw movement trace (k-1,B,T)."""
        raise NotImplementedError(f"{type(self).__name__} has no K loop")


class Encoder(nn.Module):
    """Raw input -> observations ``x (B,T,d)``. Position is not added here (it lives in experts).

    ``step`` encodes one new input with a cache, for generation; it must equal ``forward``
    at that position. ``tied_weight`` is the (V,d) table a tied output head may share.
    """

    Config: ClassVar[type[Spec]]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # (B,T,...) -> (B,T,d)
        raise NotImplementedError

    def step(self, inputs_t: torch.Tensor, cache: Any | None) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not support incremental encoding")

    @property
    def tied_weight(self) -> torch.Tensor | None:
        return None


class Expert(nn.Module):
    """Turns context into per-slot proposals ``(B,T,S_e,d)``.

    ``clock`` is ``"token"`` (proposals depend on observations only, so they are computed once per
    context update and cached across K steps) or ``"h"`` (recomputed at every K step from
    ``h_eff``). ``slots`` is S_e.

    Two phases:
    - ``context(x)`` runs once over observations ``x (B,T,d)`` in parallel and returns whatever the
      expert needs later (for a token-clocked expert: its proposals; for the attention probe: RoPE'd
      keys and values). ``context_step(x_t, cache)`` is its incremental twin for one new position
      and must agree with ``context`` at that position.
    - ``propose(h_eff, ctx, positions)`` returns ``(B,T,S_e,d)`` for the query positions
      ``positions (T,)`` (absolute indices into the sequence). Token-clocked experts ignore ``h_eff``.
    - packed queries, for an h-clocked expert that sets ``packs``: ``propose(h_eff (1,N,d), ctx,
      positions (N,), rows=rows (N,))`` returns ``(1,N,S_e,d)`` for N queries of the whole batch, query n
      at absolute position ``positions[n]`` of batch row ``rows[n]`` (rows ascending), reading that
      row's context up to that position. The K loop runs its frozen steps on the still-active
      positions packed this way, so halted positions cost nothing; without ``packs`` it masks them.

    A position's proposals may depend only on observations at positions <= its own (causality).

    Optional, for any module of a model (``parallax/diagnostics.py``, ``parallax bench ablation``):
    ``diagnostics() -> dict[str, float]``, logged to metrics.jsonl at every log step and evaluation;
    ``ablate(fraction, seed)``, a context manager that leaves out a fraction of what the module stores.
    """

    Config: ClassVar[type[Spec]]
    clock: ClassVar[Clock] = "h"
    #: an h-clocked expert sets this when ``propose`` also accepts packed queries (``rows=``, above)
    packs: ClassVar[bool] = False
    slots: int

    def context(self, x: torch.Tensor) -> Any:  # x (B,T,d)
        return None

    def context_step(self, x_t: torch.Tensor, cache: Any | None) -> tuple[Any, Any]:
        """x_t (B,1,d), the cache from previous positions -> (ctx for this position, new cache)."""
        return None, None

    def propose(self, h_eff: torch.Tensor | None, ctx: Any, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # (B,T,S_e,d)


@dataclass
class WorkspaceState:
    """The two pieces of state carried across K steps."""

    h: torch.Tensor  # (B,T,d)
    cum: torch.Tensor  # (B,T,H,S)


class Workspace(nn.Module):
    """The CWS inner loop (DESIGN.md §2.3; seed 001 §03).

    ``read(h) -> h_eff`` is what h-clocked experts see. ``project_slots(slots) -> (k, v)`` maps
    slot proposals ``(B,T,S,d)`` to keys and values ``(B,T,S,H,dh)``; token-clocked slots are
    projected once and reused across K steps. ``step`` performs one K step and returns the new
    state and the raw logits ``(B,T,H,S)`` the halting rule reads.
    """

    Config: ClassVar[type[Spec]]
    heads: int

    def init_state(self, x: torch.Tensor, n_slots: int) -> WorkspaceState:
        raise NotImplementedError

    def read(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def project_slots(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def step(
        self, state: WorkspaceState, h_eff: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        active: torch.Tensor | None = None,
    ) -> tuple[WorkspaceState, torch.Tensor]:
        """``active (B,T)`` bool, when given, marks positions still running; the loop keeps the old
        state of the others, so a workspace may skip their work."""
        raise NotImplementedError


class MotorDecoder(nn.Module):
    """Reads settled states ``h (B,T,d)`` and emits outputs (logits ``(B,T,V)`` or ``(B,C)``).

    ``step(h_t (B,1,d), cache) -> (logits_t (B,1,V), cache)`` decodes one new position and must
    equal ``forward`` there. ``tie(weight)`` receives the encoder's table when the head is tied; it is called again with
    the new tensor when a wrapper replaces the encoder's parameter (FSDP's gathered weights), so a
    second call must point the head at the new table.
    """

    Config: ClassVar[type[Spec]]

    def tie(self, weight: torch.Tensor | None) -> None:
        pass

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, h_t: torch.Tensor, cache: Any | None) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not support incremental decoding")


class HaltingRule:
    """Decides, per position, when the K loop stops. The loop owns the state of one settle (``memo``).

    ``update(raw, prev_raw, memo, k)`` receives the raw logits of step k and k-1 ``(B,T,H,S)`` and a
    memo dict it may fill; it returns a bool mask ``(B,T)`` of positions that halt after step k.
    A rule must be elementwise over positions, so positions halt independently.

    Optional, for a rule that learns:
    - ``reads_state = True``: ``update`` also receives ``h=`` the state after step k ``(B,T,d)`` (a
      buffer the loop may overwrite in place: clone what is kept in ``memo``);
    - ``reads_active = True``: the eager loop also passes ``active=`` the positions still settling
      ``(B,T)`` bool; the answer elsewhere is ignored (they have halted), so the rule may compute at
      these alone (the compiled loop, which avoids a host sync per step, passes none);
    - ``halts_before_steps`` True (a rule that reads the state): it is also asked once before the
      first frozen step, with ``k=0``, ``raw`` and ``prev_raw`` None and the initial state, so a
      position may take no frozen step at all (K = live_steps);
    - ``marks_previous`` True: ``update`` may set ``memo["keep_previous"]`` ``(B,T)``, and the marked
      positions take their live steps from the state before that step (``kloop._LiveStart``; a rule
      may set ``memo["keep"]`` for the state after it without declaring anything);
    - the rule subclasses ``nn.Module`` as well; the model then builds it as ``cls(cfg, d_model)`` and
      registers it as its submodule ``halting``, so its parameters train and are saved with the model;
    - ``loss(memo, h_frozen, decode, targets=None)``: called by the model after each training forward
      with the memo of that settle, the state after the frozen steps ``h_frozen (B,T,d)``, the model's
      decoder (``decode(h) -> logits``) and, where the trainer gave them, the targets ``(B,T)`` (or
      ``(B,)`` for a classifier), -100 where nothing is scored. A tensor it returns is added to the task loss
      (``stats["aux_loss"]``).
    """

    Config: ClassVar[type[Spec]]
    reads_state: ClassVar[bool] = False
    reads_active: ClassVar[bool] = False
    halts_before_steps: bool = False
    marks_previous: bool = False

    def __init__(self, cfg: Spec):
        self.cfg = cfg

    def update(self, raw: torch.Tensor, prev_raw: torch.Tensor | None, memo: dict, k: int) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, memo: dict, h_frozen: torch.Tensor, decode,
             targets: torch.Tensor | None = None) -> torch.Tensor | None:
        return None


class Tokenizer:
    """Text <-> token ids, for data sources of text. ``vocab_size`` ids in [0, vocab_size);
    ``eos_id`` separates documents. ``decode(encode(s)) == s`` for every string ``s``."""

    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError


class DataSource:
    """Yields training batches and a fixed validation set.

    A batch is a dict with ``inputs`` and ``targets`` (ignore index -100), and optionally ``kind``,
    an integer tensor shaped like ``targets`` that classes tokens for K reporting (names in
    ``kind_names``). ``batch(step, rank)`` must be a pure function of (seed, step, rank) so that
    resumed runs see the same data. ``vocab_size`` is the token vocabulary, where there is one.

    A source of text exposes its ``tokenizer``. What the run must keep beside its weights (a
    tokenizer trained on the data) is returned by ``files()``; the trainer writes these into
    ``out_dir`` and into every checkpoint, and calls ``restore(path)`` with a checkpoint before
    ``info`` is read, when a run is resumed, evaluated or generated from.
    """

    Config: ClassVar[type[Spec]]
    vocab_size: int | None = None
    has_accuracy: bool = False
    kind_names: dict[int, str] = {}
    tokenizer: Tokenizer | None = None

    def __init__(self, cfg: Spec, seed: int, batch_size: int):
        self.cfg = cfg
        self.seed = seed
        self.batch_size = batch_size

    @property
    def info(self) -> DataInfo:
        return DataInfo(vocab_size=self.vocab_size)

    def declared_info(self) -> DataInfo | None:
        """What ``info`` will be, from the options alone, reading no data (``parallax validate`` uses it
        offline); None when only the data can tell."""
        return None

    def files(self) -> dict[str, bytes]:
        """File name -> content, saved with the run and with every checkpoint."""
        return {}

    def restore(self, path) -> None:
        """Reload what ``files()`` saved, from the checkpoint directory ``path``."""

    def batch(self, step: int, rank: int = 0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def val_batches(self, batch_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def val_bytes(self) -> int | None:
        """For text: the UTF-8 bytes that the validation targets stand for (evaluation reports bits
        per byte, ``val_bpb``, over them); None when the data is not text."""
        return None
