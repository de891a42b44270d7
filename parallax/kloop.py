"""The K loop: settle every position's workspace under the O(1)-memory training contract.

DESIGN.md §2.4-2.5; seed 001 §04 "K-1 frozen iterations under no_grad, then one live step".
Each position runs its own number of frozen steps (until its halting rule fires, or
``k_max - live_steps``), then ``live_steps`` steps with gradient. Only the live steps build a
graph, so activation memory does not grow with K. Positions are independent (a position's
workspace reads only its own context), so all T positions settle in parallel and a halted
position's state is frozen while the others continue.

Halted positions cost nothing: once some have halted, the still-active positions of the whole batch
are packed into one flat list of N queries (B*T flattened, each with its row and its position), with
their state and token-clocked slots, and the frozen steps run the experts and the workspace on that
list alone. The workspace step is per position, so it runs on the list as a ``(1,N)`` block; each
h-clocked expert reads its own row's context up to its own position (``Expert.packs``). The list is
packed again whenever the active positions fall below ``compact_below`` of it; at the default 1 that
is every step a position halts, so the position-steps computed (``Settled.work``) are exactly each
position's frozen steps plus the live steps. A lower ``compact_below`` repacks less often and masks the
positions that halted in between (they are computed and discarded); 0 never packs. Where an h-clocked
expert does not accept packed queries, halted positions are masked in the full ``(B,T)`` block.

Compiled (``train.compile``): each step is one compiled graph, and the frozen steps run on the full
block with halted positions masked, so that the graph's shapes never change and nothing recompiles;
the host is asked whether any position still settles every ``SYNC_EVERY`` steps instead of every step.
The states are eager's; ``work`` then counts every masked step of the block.

A halting rule sees, after each frozen step, the raw logits of that step and the last (``(B,T,H,S)``,
zero at positions not computed in it), when it declares ``reads_state`` the state ``h (B,T,d)``, and when
it declares ``reads_active`` the positions still settling, so that it need only decide those;
one that declares ``halts_before_steps`` is asked at k = 0 as well, on the initial state. A rule may
also mark, in its memo, the state from which a position's live steps should start instead of the last
one (``_LiveStart``): the learned rule's hindsight exploration trains the live step from the state
before a position's first right answer.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .protocols import Expert, HaltingRule, Workspace, WorkspaceState

#: the default of ``model.compact_below``: repack the active positions whenever one halts
COMPACT_BELOW = 1.0


@dataclass
class Settled:
    h: torch.Tensor  # (B,T,d) settled workspace state
    k: torch.Tensor  # (B,T) K steps used by each position (frozen + live)
    work: int = 0  # position-steps actually computed (masked positions included)
    trace: list[torch.Tensor] = field(default_factory=list)  # per step: RMS movement of raw (B,T)
    h_frozen: torch.Tensor | None = None  # (B,T,d) the state after the frozen steps, before the live ones
    memo: dict = field(default_factory=dict)  # what the halting rule kept across steps


def settle(
    workspace: Workspace,
    experts: Sequence[Expert],
    contexts: Sequence[Any],
    x: torch.Tensor,  # (B,T,d) observations
    positions: torch.Tensor,  # (T,) absolute positions of x's rows
    halting: HaltingRule | None,
    k_max: int,
    live_steps: int = 1,
    trace: bool = False,
    compact_below: float = COMPACT_BELOW,
    compiled: bool = False,
    memo: dict | None = None,
) -> Settled:
    """Settle every position: frozen steps until its halting rule fires (never, when ``halting`` is None)
    or ``k_max - live_steps`` frozen steps are done, then ``live_steps`` steps with gradient.
    Returns the settled ``h (B,T,d)``, each position's K ``(B,T)`` and the position-steps computed.
    ``compiled``: the frozen steps run as one compiled graph per step on the masked full block, with
    the host consulted every ``SYNC_EVERY`` steps (``_frozen``); same states as eager. ``memo``: what the
    halting rule's memo starts with (the model's decoder and targets in training, ``"decode"``, ``"targets"``)."""
    B, T, _ = x.shape
    token = [(e, c) for e, c in zip(experts, contexts) if e.clock == "token"]
    clocked = [(e, c) for e, c in zip(experts, contexts) if e.clock == "h"]
    can_pack = all(e.packs for e, _ in clocked)
    # ``active`` is optional in the Workspace protocol; the loop masks halted positions either way
    takes_active = "active" in inspect.signature(workspace.step).parameters

    # Token-clocked proposals do not depend on h: project their keys/values once, with grad,
    # and reuse them (detached) in every frozen step.
    tok_k = tok_v = None
    if token:
        slots = torch.cat([e.propose(None, c, positions) for e, c in token], dim=2)  # (B,T,S_tok,d)
        tok_k, tok_v = workspace.project_slots(slots)  # (B,T,S_tok,H,dh) each
    n_slots = sum(e.slots for e in experts)

    step = _compiled("step") if compiled else _step

    def one_step(state: WorkspaceState, tk, tv, pos, active=None, rows=None) -> tuple[WorkspaceState, torch.Tensor]:
        return step(workspace, clocked, takes_active, state, tk, tv, pos, active, rows)

    state = workspace.init_state(x, n_slots)
    with torch.no_grad():
        state = WorkspaceState(state.h.detach(), state.cum.detach())
        tk = tok_k.detach() if tok_k is not None else None
        tv = tok_v.detach() if tok_v is not None else None
        state, steps, prev_raw, traces, work, memo = _frozen(
            one_step, workspace, clocked, takes_active, state, tk, tv, positions, halting, k_max - live_steps,
            trace, can_pack, compact_below, compiled, dict(memo or {}))
    h_frozen = state.h
    for _ in range(live_steps):
        state, raw = one_step(state, tok_k, tok_v, positions)
        work += B * T
        if trace and prev_raw is not None:
            traces.append(movement(raw.detach(), prev_raw))
        prev_raw = raw.detach()
    return Settled(h=state.h, k=steps + live_steps, work=work, trace=traces, h_frozen=h_frozen, memo=memo)


def _step(workspace: Workspace, clocked, takes_active: bool, state: WorkspaceState, tk, tv, pos,
          active=None, rows=None) -> tuple[WorkspaceState, torch.Tensor]:
    """One workspace step: read h, gather every slot's keys and values, step. -> (new state, raw (B,T,H,S))."""
    h_eff = workspace.read(state.h)  # (B,T,d), or (1,N,d) packed
    ks, vs = ([tk], [tv]) if tk is not None else ([], [])
    if clocked:
        if rows is None:
            hslots = torch.cat([e.propose(h_eff, c, pos) for e, c in clocked], dim=2)  # (B,T,S_h,d)
        else:
            hslots = torch.cat([e.propose(h_eff, c, pos, rows=rows) for e, c in clocked], dim=2)  # (1,N,S_h,d)
        hk, hv = workspace.project_slots(hslots)
        ks.append(hk)
        vs.append(hv)
    k = torch.cat(ks, dim=2) if len(ks) > 1 else ks[0]  # (B,T,S,H,dh)
    v = torch.cat(vs, dim=2) if len(vs) > 1 else vs[0]
    if active is not None and takes_active:
        return workspace.step(state, h_eff, k, v, active)
    return workspace.step(state, h_eff, k, v)


def _halt(halting: HaltingRule | None, raw, prev_raw, memo: dict, k: int, state: WorkspaceState, active,
          sparse: bool = True):
    """``active`` less the positions the halting rule stops after step k. ``sparse``: a rule that
    ``reads_active`` is given the mask (the eager loop, which syncs with the host every step anyway; the
    compiled loop, which syncs every ``SYNC_EVERY`` steps, lets the rule decide the whole block)."""
    if halting is None:
        return active
    given = {"h": state.h} if halting.reads_state else {}
    if halting.reads_active and sparse:
        given["active"] = active
    halt = halting.update(raw, prev_raw, memo, k, **given)
    return active & ~halt


#: the compiled frozen phase asks the host whether any position is still settling every this many steps
SYNC_EVERY = 4


@torch.compiler.disable  # a compiled model calls in here: the loop is not traced, the compiled step is its own graph
def _frozen(one_step, workspace, clocked, takes_active, state, tk, tv, positions, halting, n_frozen: int,
            trace: bool, can_pack: bool, compact_below: float, compiled: bool, memo: dict):
    """The frozen steps, under ``no_grad``. -> (state, steps (B,T), last raw, trace, work, memo).

    Eager: one host sync per step, and the active positions packed into a list as they thin.
    Compiled: the step is one graph (``_masked_step``), reused at every step because its shapes never
    change (the full block, halted positions masked rather than packed), and the host is asked whether
    any position is still settling only every ``SYNC_EVERY`` steps; the steps after the last position
    halts within a stretch change nothing and are counted in ``work``. The halting rule runs eagerly
    between steps either way, so that any rule (one that draws random numbers or reads the host
    included) decides as it does in eager."""
    B, T = state.h.shape[:2]
    active = torch.ones(B, T, dtype=torch.bool, device=state.h.device)
    steps = torch.zeros(B, T, dtype=torch.long, device=state.h.device)
    prev_raw = None
    traces: list[torch.Tensor] = []
    work = 0
    pk: _Packed | None = None  # the packed active positions, once halting has thinned the batch
    masked_step = _compiled("masked_step") if compiled else None
    # where a rule asks (``memo["keep"]``), the live steps start from an earlier state
    start = _LiveStart(copies_previous=halting is not None and halting.marks_previous)
    if n_frozen and halting is not None and halting.halts_before_steps:  # a position may need no frozen step
        active = _halt(halting, None, None, memo, 0, state, active, sparse=not compiled)
        start.offer(memo, state, steps)
    for i in range(n_frozen):
        start.before_step(state, steps)
        if masked_step is not None:
            if i % SYNC_EVERY == 0 and not bool(active.any()):  # the host sync, every SYNC_EVERY steps
                break
            h, cum, raw = masked_step(workspace, clocked, takes_active, state.h, state.cum, tk, tv, positions, active)
            state, block = WorkspaceState(h, cum), B * T
        else:
            n_active = int(active.sum())  # the one host sync of a step
            if n_active == 0:
                break
            block = B * T if pk is None else pk.n
            if can_pack and n_active < compact_below * block:
                if pk is None:  # the packed steps write into the full state in place: own it first
                    state = WorkspaceState(state.h.clone(), state.cum.clone())
                pk = _Packed.gather(state, tk, tv, positions, active)
                block = n_active
            if pk is None:
                new, raw = one_step(state, tk, tv, positions, active)
                m = active[..., None]
                state = WorkspaceState(torch.where(m, new.h, state.h), torch.where(m[..., None], new.cum, state.cum))
            else:
                raw = pk.step(one_step, state, active, takes_mask=n_active < block)
        work += block
        steps += active.long()
        if trace and prev_raw is not None:
            traces.append(movement(raw, prev_raw))
        active = _halt(halting, raw, prev_raw, memo, i + 1, state, active, sparse=not compiled)
        start.offer(memo, state, steps)
        prev_raw = raw
    state, steps = start.apply(state, steps)
    return state, steps, prev_raw, traces, work, memo


class _LiveStart:
    """The states a halting rule marks, per position, as where the live steps should start.

    A rule may set ``memo["keep"]`` ``(B,T)`` after any step: the loop then keeps those positions'
    state and step count (the latest marked wins), and once the frozen steps are done the marked
    positions take their live steps from the kept state, with K counted from it. A rule that declares
    ``marks_previous`` may set ``memo["keep_previous"]`` instead, for the state one step earlier (one
    judged by the answer of the step after it); the loop then holds a copy of each state for one step.
    Positions never marked start from where their frozen steps ended. The steps run past the kept
    state are still counted in ``work``: they were computed."""

    def __init__(self, copies_previous: bool = False):
        self.copies_previous = copies_previous  # the rule's ``marks_previous``, read once per settle
        self.h = self.cum = self.steps = self.marked = None
        self.prev: tuple[WorkspaceState, torch.Tensor] | None = None

    def before_step(self, state: WorkspaceState, steps: torch.Tensor) -> None:
        if self.copies_previous:  # a copy: the packed steps write into the state in place
            self.prev = (WorkspaceState(state.h.clone(), state.cum.clone()), steps.clone())

    def offer(self, memo: dict, state: WorkspaceState, steps: torch.Tensor) -> None:
        previous = memo.pop("keep_previous", None)  # (B,T) bool, or None
        if previous is not None and self.prev is not None:
            self._mark(previous, *self.prev)
        keep = memo.pop("keep", None)  # (B,T) bool, or None
        if keep is not None:
            self._mark(keep, state, steps)

    def _mark(self, keep: torch.Tensor, state: WorkspaceState, steps: torch.Tensor) -> None:
        if self.h is None:
            self.h, self.cum, self.steps = state.h.clone(), state.cum.clone(), steps.clone()
            self.marked = keep.clone()
            return
        m = keep[..., None]  # (B,T,1)
        self.h = torch.where(m, state.h, self.h)
        self.cum = torch.where(m[..., None], state.cum, self.cum)
        self.steps = torch.where(keep, steps, self.steps)
        self.marked = self.marked | keep

    def apply(self, state: WorkspaceState, steps: torch.Tensor) -> tuple[WorkspaceState, torch.Tensor]:
        if self.h is None:
            return state, steps
        m = self.marked[..., None]  # (B,T,1)
        h = torch.where(m, self.h, state.h)  # (B,T,d)
        cum = torch.where(m[..., None], self.cum, state.cum)  # (B,T,H,S)
        return WorkspaceState(h, cum), torch.where(self.marked, self.steps, steps)


def _masked_step(workspace, clocked, takes_active, h, cum, tk, tv, positions, active):
    """One frozen step of the full ``(B,T)`` block; halted positions keep their state. The unit compiled."""
    new, raw = _step(workspace, clocked, takes_active, WorkspaceState(h, cum), tk, tv, positions, active)
    m = active[..., None]  # (B,T,1)
    # raw is 0 where not computed, as the eager loop's is (a workspace without ``active`` leaves it)
    return torch.where(m, new.h, h), torch.where(m[..., None], new.cum, cum), raw * m[..., None]


_COMPILED: dict = {}


def _compiled(name: str):
    """The compiled form of ``_step`` (the live steps, with gradient) or ``_masked_step`` (the frozen ones),
    made once per process; torch.compile keeps one graph per model and shape under it."""
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile({"step": _step, "masked_step": _masked_step}[name])
    return _COMPILED[name]


@dataclass
class _Packed:
    """The active positions of the whole batch as one flat list of N, with their state and token slots.

    Tensors keep a leading batch dimension of 1, so ``(1,N,...)`` blocks pass through the workspace
    as a batch of one sequence of N positions; ``rows`` and ``pos`` say where each came from."""

    idx: torch.Tensor  # (N,) flat indices b*T + t into the batch, ascending (so grouped by row)
    rows: torch.Tensor  # (N,) batch row of each
    pos: torch.Tensor  # (N,) absolute position of each
    h: torch.Tensor  # (1,N,d)
    cum: torch.Tensor  # (1,N,H,S)
    tk: torch.Tensor | None  # (1,N,S_tok,H,dh)
    tv: torch.Tensor | None

    @property
    def n(self) -> int:
        return self.idx.numel()

    @classmethod
    def gather(cls, state: WorkspaceState, tk, tv, positions: torch.Tensor, active: torch.Tensor) -> _Packed:
        B, T = active.shape
        idx = active.reshape(-1).nonzero().squeeze(1)  # (N,)
        take = lambda t: t.flatten(0, 1).index_select(0, idx)[None] if t is not None else None  # noqa: E731
        return cls(idx, idx // T, positions[idx % T], take(state.h), take(state.cum), take(tk), take(tv))

    def step(self, one_step, state: WorkspaceState, active: torch.Tensor, takes_mask: bool) -> torch.Tensor:
        """One frozen step of the list, written into ``state`` in place; returns raw in the full
        ``(B,T,H,S)`` layout (0 at positions not in the list)."""
        run = active.reshape(-1).index_select(0, self.idx)[None] if takes_mask else None  # (1,N) still settling
        new, raw = one_step(WorkspaceState(self.h, self.cum), self.tk, self.tv, self.pos, run, self.rows)
        if run is None:
            self.h, self.cum = new.h, new.cum
        else:  # positions that halted since the last packing keep their state
            self.h = torch.where(run[..., None], new.h, self.h)
            self.cum = torch.where(run[..., None, None], new.cum, self.cum)
            raw = raw * run[..., None, None]
        B, T = active.shape
        state.h.view(B * T, -1).index_copy_(0, self.idx, self.h[0])
        state.cum.view(B * T, *self.cum.shape[2:]).index_copy_(0, self.idx, self.cum[0])
        full = raw.new_zeros(B * T, *raw.shape[2:])  # (B*T,H,S)
        return full.index_copy_(0, self.idx, raw[0]).view(B, T, *raw.shape[2:])


def movement(raw: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """The momentum m_k: RMS of ``raw_k - raw_{k-1}`` (B,T,H,S) over heads and slots, ``(B,T)`` (seed 001 §04).

    The K loop's trace and the momentum halting rule both read it."""
    return (raw - prev).float().pow(2).mean(dim=(-2, -1)).sqrt()
