"""The K loop: settle every position's workspace under the O(1)-memory training contract.

DESIGN.md §2.4-2.5; seed 001 §04 "K-1 frozen iterations under no_grad, then one live step".
Each position runs its own number of frozen steps (until its halting rule fires, or
``k_max - live_steps``), then ``live_steps`` steps with gradient. Only the live steps build a
graph, so activation memory does not grow with K. Positions are independent (a position's
workspace reads only its own context), so all T positions settle in parallel and a halted
position's state is frozen while the others continue.

Halted positions stop costing compute: every row's active positions can be gathered into a
``(B,T')`` working set (T' the most active positions in any row), with their state and
token-clocked slots, and the frozen steps run on that block alone. A gather happens when the block
it would give is smaller than ``compact_below`` times the block being computed (the full ``(B,T)``
at first, then the working set), so its cost is paid a few times per settle, not every step, and
never for a block that gathering cannot make narrower. This needs the h-clocked experts to accept per-row positions
(``Expert.gather``); otherwise halted positions are masked, which freezes them but still computes
them.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .protocols import Expert, HaltingRule, Workspace, WorkspaceState

#: the default of ``model.compact_below``: gather once the working set would be under 3/4 of the block
COMPACT_BELOW = 0.75


@dataclass
class Settled:
    h: torch.Tensor  # (B,T,d) settled workspace state
    k: torch.Tensor  # (B,T) K steps used by each position (frozen + live)
    work: int = 0  # position-steps actually computed (padding of gathered blocks included)
    trace: list[torch.Tensor] = field(default_factory=list)  # per step: RMS movement of raw (B,T)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B,T,...) and idx (B,T') -> x[b, idx[b, j]] as (B,T',...)."""
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))


def _scatter_rows(x: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Write src (B,T',...) into a copy of x (B,T,...) at idx where valid (padding entries are dropped)."""
    src = torch.where(valid.view(*valid.shape, *([1] * (src.dim() - 2))), src, _gather_rows(x, idx))
    return x.scatter(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]), src)


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
) -> Settled:
    """Settle every position: frozen steps until its halting rule fires (never, when ``halting`` is None)
    or ``k_max - live_steps`` frozen steps are done, then ``live_steps`` steps with gradient.
    Returns the settled ``h (B,T,d)``, each position's K ``(B,T)`` and the position-steps computed."""
    B, T, _ = x.shape
    token = [(e, c) for e, c in zip(experts, contexts) if e.clock == "token"]
    clocked = [(e, c) for e, c in zip(experts, contexts) if e.clock == "h"]
    can_gather = all(getattr(e, "gather", False) for e, _ in clocked)
    # ``active`` is optional in the Workspace protocol; the loop masks halted positions either way
    takes_active = "active" in inspect.signature(workspace.step).parameters

    # Token-clocked proposals do not depend on h: project their keys/values once, with grad,
    # and reuse them (detached) in every frozen step.
    tok_k = tok_v = None
    if token:
        slots = torch.cat([e.propose(None, c, positions) for e, c in token], dim=2)  # (B,T,S_tok,d)
        tok_k, tok_v = workspace.project_slots(slots)  # (B,T,S_tok,H,dh) each
    n_slots = sum(e.slots for e in experts)

    def one_step(state: WorkspaceState, tk, tv, pos, active=None) -> tuple[WorkspaceState, torch.Tensor]:
        h_eff = workspace.read(state.h)  # (B,T,d)
        ks, vs = ([tk], [tv]) if tk is not None else ([], [])
        if clocked:
            hslots = torch.cat([e.propose(h_eff, c, pos) for e, c in clocked], dim=2)  # (B,T,S_h,d)
            hk, hv = workspace.project_slots(hslots)
            ks.append(hk)
            vs.append(hv)
        k = torch.cat(ks, dim=2) if len(ks) > 1 else ks[0]  # (B,T,S,H,dh)
        v = torch.cat(vs, dim=2) if len(vs) > 1 else vs[0]
        if active is not None and takes_active:
            return workspace.step(state, h_eff, k, v, active)
        return workspace.step(state, h_eff, k, v)

    state = workspace.init_state(x, n_slots)
    active = torch.ones(B, T, dtype=torch.bool, device=x.device)
    steps = torch.zeros(B, T, dtype=torch.long, device=x.device)
    memo: dict = {}
    prev_raw = None
    traces: list[torch.Tensor] = []
    work = 0
    ws: _WorkingSet | None = None  # the gathered active positions, once halting has thinned the batch
    with torch.no_grad():
        state = WorkspaceState(state.h.detach(), state.cum.detach())
        tk = tok_k.detach() if tok_k is not None else None
        tv = tok_v.detach() if tok_v is not None else None
        for i in range(k_max - live_steps):
            # the one host sync of a step: the active count, and the widest row (the width a gather would have)
            n_active, widest = torch.stack([active.sum(), active.sum(1).max()]).tolist()
            if n_active == 0:
                break
            block = B * T if ws is None else ws.order.numel()
            # gather when the new block would be smaller than compact_below of the current one: with rows
            # unevenly active, a block can be mostly padding and still as narrow as gathering makes it
            if can_gather and B * widest < compact_below * block:
                if ws is not None:
                    state = ws.write_back(state)
                ws = _WorkingSet.gather(state, tk, tv, positions, active, widest)
            if ws is None:
                new, raw = one_step(state, tk, tv, positions, active)
                m = active[..., None]
                state = WorkspaceState(torch.where(m, new.h, state.h), torch.where(m[..., None], new.cum, state.cum))
                work += B * T
            else:
                raw = ws.step(one_step, active)
                work += ws.order.numel()
            steps += active.long()
            if trace and prev_raw is not None:
                traces.append(movement(raw, prev_raw))
            if halting is not None:
                active = active & ~halting.update(raw, prev_raw, memo, i + 1)
            prev_raw = raw
        if ws is not None:
            state = ws.write_back(state)
    for _ in range(live_steps):
        state, raw = one_step(state, tok_k, tok_v, positions)
        work += B * T
        if trace and prev_raw is not None:
            traces.append(movement(raw.detach(), prev_raw))
        prev_raw = raw.detach()
    return Settled(h=state.h, k=steps + live_steps, work=work, trace=traces)


@dataclass
class _WorkingSet:
    """Each row's active positions, gathered into ``(B,T')`` with their state and token-clocked slots."""

    order: torch.Tensor  # (B,T') indices into T; each row's active positions first, then padding
    valid: torch.Tensor  # (B,T') False on padding
    h: torch.Tensor  # (B,T',d)
    cum: torch.Tensor  # (B,T',H,S)
    tk: torch.Tensor | None  # (B,T',S_tok,H,dh)
    tv: torch.Tensor | None
    pos: torch.Tensor  # (B,T') absolute positions

    @classmethod
    def gather(cls, state: WorkspaceState, tk, tv, positions: torch.Tensor, active: torch.Tensor,
               width: int) -> "_WorkingSet":
        counts = active.sum(1)  # (B,)
        # a stable sort puts each row's active positions first, in order; the tail is padding
        order = torch.sort((~active).to(torch.int8), dim=1, stable=True).indices[:, :width]  # (B,T')
        valid = torch.arange(width, device=active.device)[None, :] < counts[:, None]  # (B,T')
        return cls(order, valid, _gather_rows(state.h, order), _gather_rows(state.cum, order),
                   _gather_rows(tk, order) if tk is not None else None,
                   _gather_rows(tv, order) if tv is not None else None, positions[order])

    def step(self, one_step, active: torch.Tensor) -> torch.Tensor:
        """One frozen step of the working set; returns raw in the full ``(B,T,H,S)`` layout (0 where halted)."""
        run = _gather_rows(active, self.order) & self.valid  # (B,T') still settling
        new, raw = one_step(WorkspaceState(self.h, self.cum), self.tk, self.tv, self.pos, run)
        m = run[..., None]
        self.h = torch.where(m, new.h, self.h)
        self.cum = torch.where(m[..., None], new.cum, self.cum)
        B, T = active.shape
        full = raw.new_zeros(B, T, *raw.shape[2:])  # (B,T,H,S)
        return _scatter_rows(full, self.order, run, raw)

    def write_back(self, state: WorkspaceState) -> WorkspaceState:
        return WorkspaceState(_scatter_rows(state.h, self.order, self.valid, self.h),
                              _scatter_rows(state.cum, self.order, self.valid, self.cum))


def movement(raw: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """The momentum m_k: RMS of ``raw_k - raw_{k-1}`` (B,T,H,S) over heads and slots, ``(B,T)`` (seed 001 §04).

    The K loop's trace and the momentum halting rule both read it."""
    return (raw - prev).float().pow(2).mean(dim=(-2, -1)).sqrt()
