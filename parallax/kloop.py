"""The K loop: settle every position's workspace under the O(1)-memory training contract.

DESIGN.md §2.4-2.5; seed 001 §04 "K-1 frozen iterations under no_grad, then one live step".
Each position runs its own number of frozen steps (until its halting rule fires, or
``k_max - live_steps``), then ``live_steps`` steps with gradient. Only the live steps build a
graph, so activation memory does not grow with K. Positions are independent (a position's
workspace reads only its own context), so all T positions settle in parallel and a halted
position's state is frozen while the others continue.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .protocols import Expert, HaltingRule, Workspace, WorkspaceState


@dataclass
class Settled:
    h: torch.Tensor  # (B,T,d) settled workspace state
    k: torch.Tensor  # (B,T) K steps used by each position (frozen + live)
    trace: list[torch.Tensor] = field(default_factory=list)  # per step: RMS movement of raw (B,T)


def _select(mask: torch.Tensor, new: WorkspaceState, old: WorkspaceState) -> WorkspaceState:
    """Keep ``old`` where ``mask (B,T)`` is False: halted positions stop changing."""
    m = mask[..., None]
    return WorkspaceState(h=torch.where(m, new.h, old.h), cum=torch.where(m[..., None], new.cum, old.cum))


def settle(
    workspace: Workspace,
    experts: Sequence[Expert],
    contexts: Sequence[Any],
    x: torch.Tensor,  # (B,T,d) observations
    positions: torch.Tensor,  # (T,) absolute positions of x's rows
    halting: HaltingRule,
    k_max: int,
    live_steps: int = 1,
    trace: bool = False,
) -> Settled:
    B, T, _ = x.shape
    token = [(e, c) for e, c in zip(experts, contexts) if e.clock == "token"]
    clocked = [(e, c) for e, c in zip(experts, contexts) if e.clock == "h"]

    # Token-clocked proposals do not depend on h: project their keys/values once, with grad,
    # and reuse them (detached) in every frozen step.
    tok_k = tok_v = None
    if token:
        slots = torch.cat([e.propose(None, c, positions) for e, c in token], dim=2)  # (B,T,S_tok,d)
        tok_k, tok_v = workspace.project_slots(slots)  # (B,T,S_tok,H,dh) each
    n_slots = sum(e.slots for e in experts)

    def one_step(state: WorkspaceState, tk, tv) -> tuple[WorkspaceState, torch.Tensor]:
        h_eff = workspace.read(state.h)  # (B,T,d)
        ks, vs = ([tk], [tv]) if tk is not None else ([], [])
        if clocked:
            hslots = torch.cat([e.propose(h_eff, c, positions) for e, c in clocked], dim=2)  # (B,T,S_h,d)
            hk, hv = workspace.project_slots(hslots)
            ks.append(hk)
            vs.append(hv)
        k = torch.cat(ks, dim=2) if len(ks) > 1 else ks[0]  # (B,T,S,H,dh)
        v = torch.cat(vs, dim=2) if len(vs) > 1 else vs[0]
        return workspace.step(state, h_eff, k, v)

    state = workspace.init_state(x, n_slots)
    active = torch.ones(B, T, dtype=torch.bool, device=x.device)
    steps = torch.zeros(B, T, dtype=torch.long, device=x.device)
    memo: dict = {}
    prev_raw = None
    traces: list[torch.Tensor] = []
    with torch.no_grad():
        state = WorkspaceState(state.h.detach(), state.cum.detach())
        tk = tok_k.detach() if tok_k is not None else None
        tv = tok_v.detach() if tok_v is not None else None
        for i in range(k_max - live_steps):
            new, raw = one_step(state, tk, tv)
            state = _select(active, new, state)
            steps += active.long()
            if trace and prev_raw is not None:
                traces.append(_movement(raw, prev_raw))
            halt = halting.update(raw, prev_raw, memo, i + 1)
            prev_raw = raw
            active = active & ~halt
            if not bool(active.any()):
                break
    for _ in range(live_steps):
        state, raw = one_step(state, tok_k, tok_v)
        if trace and prev_raw is not None:
            traces.append(_movement(raw.detach(), prev_raw))
        prev_raw = raw.detach()
    return Settled(h=state.h, k=steps + live_steps, trace=traces)


def _movement(raw: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """RMS of ``raw_k - raw_{k-1}`` over heads and slots: ``(B,T)``."""
    return (raw - prev).float().pow(2).mean(dim=(-2, -1)).sqrt()
