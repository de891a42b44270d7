"""``assert_workspace_conforms``: the Workspace protocol, checked inside a small K loop like the real one.

Shapes: B batch, T positions, S slots, d model width, H heads, dh head width. The loop projects
token-clocked slots ``(B,T,S_tok,d)`` once, and at every step h-clocked slots made from ``h_eff``
by a fixed stand-in expert; it runs K steps and returns the settled ``h (B,T,d)``.

Checks, by the name ``skip`` takes:
- protocol: subclasses ``parallax.Workspace``; ``Config`` forbids unknown keys and defaults ``type``;
  ``heads`` is a positive int.
- shapes: ``init_state`` gives h ``(B,T,d)`` and cum ``(B,T,H,S)``; ``read`` gives ``(B,T,d)``;
  ``project_slots`` gives k and v ``(B,T,S,H,dh)``; ``step`` keeps the state's shapes and returns raw
  logits ``(B,T,H,S)``.
- dtypes: float32 in, float32 out; float64 out when the workspace and its inputs are in float64.
- slotwise: ``project_slots`` treats each slot alone, so projecting token-clocked slots once and
  h-clocked slots at every step, then concatenating, equals projecting them together.
- positions: positions settle independently: changing one position's inputs changes only its state.
- incremental: settling one position alone (as generation does) equals its row of the parallel loop.
- halted: inside the real K loop (``parallax.kloop.settle``, masked and packed), with positions
  halting after different steps, every position ends where a fixed loop of its own K leaves it: a
  halted position's state does not move (a workspace that writes the state in place, or mishandles
  ``active``, fails here).
- state_dict, safetensors, autocast, no_grad_then_live: the shared checks of ``conformance``.
"""
from __future__ import annotations

from typing import Any

import torch

from ..kloop import settle as kloop_settle
from ..protocols import DataInfo, Expert, HaltingRule, Workspace, WorkspaceState
from .conformance import (
    Subject,
    changed_positions,
    check_dtypes,
    check_protocol,
    check_shared,
    differs,
    perturbed,
    randn,
    require,
    start,
)

CHECKS = ("protocol", "shapes", "dtypes", "slotwise", "positions", "incremental", "halted")


class _GivenSlots(Expert):
    """Token-clocked stand-in expert: its context is the slots ``(B,T,S_tok,d)`` it proposes."""

    clock = "token"

    def __init__(self, slots: int):
        super().__init__()
        self.slots = slots

    def context(self, x):
        return self.given

    def propose(self, h_eff, ctx, positions):
        return ctx  # (B,T,S_tok,d)


class _MixedState(Expert):
    """h-clocked stand-in expert: ``tanh(h_eff * mix)`` per slot, the same at any query positions."""

    clock = "h"
    packs = True  # position-independent, so it takes the K loop's packed list of active positions

    def __init__(self, mix: torch.Tensor):
        super().__init__()
        self.slots = mix.shape[0]
        self.mix = mix  # (S_h,d)

    def propose(self, h_eff, ctx, positions, rows=None):
        return torch.tanh(h_eff[:, :, None, :] * self.mix.to(h_eff.dtype))  # (B,T,S_h,d) or packed (1,N,S_h,d)


class _HaltAfter(HaltingRule):
    """Halts each position after the frozen step ``at (B,T)`` names."""

    def __init__(self, at: torch.Tensor):
        self.at = at

    def update(self, raw, prev_raw, memo, k):
        return self.at == k  # (B,T)


def assert_workspace_conforms(
    workspace: type | str,
    config: dict | Any | None = None,
    *,
    d_model: int = 16,
    info: DataInfo | None = None,
    batch: int = 2,
    seq: int = 5,
    token_slots: int = 2,
    h_slots: int = 2,
    k_steps: int = 3,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    device: str | torch.device = "cpu",
    skip: tuple[str, ...] | list[str] = (),
) -> None:
    """Raise ``ConformanceError`` listing every check the workspace fails (see the module docstring)."""
    if k_steps < 2:
        raise ValueError("k_steps: the frozen-then-live check needs at least 2 K steps")
    cls, name, label, build, report, dev = start("workspaces", workspace, config, CHECKS, skip, d_model,
                                                 info or DataInfo(vocab_size=11), device)
    B, T, d, S = batch, seq, d_model, token_slots + h_slots
    mix = randn(h_slots, d, seed=5, device=dev)  # (S_h,d) the stand-in h-clocked expert

    def example() -> tuple:
        x = randn(B, T, d, seed=1, device=dev, grad=True)  # (B,T,d) observations
        tok = randn(B, T, token_slots, d, seed=2, device=dev, grad=True)  # (B,T,S_tok,d)
        return x, tok

    def settle(m, x, tok, frozen: int, live: int, detach_between: bool = False) -> torch.Tensor:
        tk, tv = m.project_slots(tok)  # (B,T,S_tok,H,dh) each, once per context update

        def one(state, tk, tv):
            h_eff = m.read(state.h)  # (B,T,d)
            hk, hv = m.project_slots(torch.tanh(h_eff[:, :, None, :] * mix.to(h_eff.dtype)))  # (B,T,S_h,H,dh)
            return m.step(state, h_eff, torch.cat([tk, hk], dim=2), torch.cat([tv, hv], dim=2))

        state = m.init_state(x, S)
        if frozen:
            with torch.no_grad():
                state = WorkspaceState(state.h.detach(), state.cum.detach())
                for _ in range(frozen):
                    state, _ = one(state, tk.detach(), tv.detach())
        for i in range(live):
            if detach_between and i == live - 1:
                state = WorkspaceState(state.h.detach(), state.cum.detach())
            state, _ = one(state, tk, tv)
        return state.h  # (B,T,d)

    s = Subject(
        label, dev, build, example,
        forward=lambda m, ins: settle(m, *ins, frozen=0, live=k_steps),
        live=lambda m, ins: settle(m, *ins, frozen=0, live=k_steps, detach_between=True),
        frozen_then_live=lambda m, ins: settle(m, *ins, frozen=k_steps - 1, live=1),
    )

    def protocol() -> None:
        check_protocol(cls, Workspace, name)
        heads = getattr(build(0), "heads", None)
        require(isinstance(heads, int) and not isinstance(heads, bool) and heads >= 1,
                f"heads is {heads!r}; set self.heads to the number of workspace heads H (a positive int)")

    def shapes() -> None:
        m = build(0)
        x, tok = example()
        H = m.heads
        with torch.no_grad():
            state = m.init_state(x, S)
            require(tuple(state.h.shape) == (B, T, d), f"init_state gave h of shape {tuple(state.h.shape)}; "
                                                       f"expected (B,T,d) = {(B, T, d)}")
            require(tuple(state.cum.shape) == (B, T, H, S), f"init_state gave cum of shape {tuple(state.cum.shape)}; "
                                                            f"expected (B,T,H,S) = {(B, T, H, S)}")
            h_eff = m.read(state.h)
            require(tuple(h_eff.shape) == (B, T, d), f"read gave shape {tuple(h_eff.shape)}; expected (B,T,d)")
            k, v = m.project_slots(torch.cat([tok, tok], dim=2)[:, :, :S])
            require(k.shape == v.shape and k.dim() == 5 and tuple(k.shape[:4]) == (B, T, S, H),
                    f"project_slots gave k {tuple(k.shape)} and v {tuple(v.shape)}; expected (B,T,S,H,dh) each "
                    f"with (B,T,S,H) = {(B, T, S, H)}")
            new, raw = m.step(state, h_eff, k, v)
            require(tuple(new.h.shape) == (B, T, d) and tuple(new.cum.shape) == (B, T, H, S),
                    f"step changed the state's shapes to h {tuple(new.h.shape)}, cum {tuple(new.cum.shape)}")
            require(tuple(raw.shape) == (B, T, H, S), f"step returned raw logits of shape {tuple(raw.shape)}; "
                                                      f"expected (B,T,H,S) = {(B, T, H, S)} for the halting rule")

    def slotwise() -> None:
        m = build(0)
        _, tok = example()
        other = randn(B, T, h_slots, d, seed=6, device=dev)  # (B,T,S_h,d)
        with torch.no_grad():
            k, v = m.project_slots(torch.cat([tok, other], dim=2))
            k1, v1 = m.project_slots(tok)
            k2, v2 = m.project_slots(other)
            diff = (differs(torch.cat([k1, k2], dim=2), k, rtol, atol)
                    or differs(torch.cat([v1, v2], dim=2), v, rtol, atol))
        require(diff is None,
                f"project_slots of a concatenation differs from the concatenation of project_slots{diff}; "
                f"project each slot on its own (token-clocked slots are projected once and reused)")

    def positions() -> None:
        m = build(0)
        x, tok = example()
        j = T // 2
        with torch.no_grad():
            base = s.forward(m, (x, tok))
            moved = changed_positions(s.forward(m, (perturbed(x, [j]), perturbed(tok, [j]))), base, rtol, atol)
        others = [t for t in moved if t != j]
        require(not others, f"the state at position {others[0] if others else 0} changed when only position {j}'s "
                            f"inputs changed; each position's workspace must read its own row only")

    def incremental() -> None:
        m = build(0)
        x, tok = example()
        with torch.no_grad():
            want = s.forward(m, (x, tok))
            alone = torch.cat([s.forward(m, (x[:, t : t + 1], tok[:, t : t + 1])) for t in range(T)], dim=1)
            diff = differs(alone, want, rtol, atol)
        require(diff is None, f"settling one position alone differs from settling all positions together{diff}; "
                              f"generation settles each new position alone")

    def halted() -> None:
        m = build(0)
        x, tok = example()
        k_max, live = max(k_steps, 4), 1
        given, probe = _GivenSlots(token_slots), _MixedState(mix)
        given.given = tok.detach()
        at = 1 + torch.arange(B * T, device=dev).view(B, T) % (k_max - live)  # (B,T) halts after 1..k_max-1
        experts = [given, probe]
        ctx = [e.context(x) for e in experts]
        pos = torch.arange(T, device=dev)
        with torch.no_grad():
            xs = x.detach()
            # the reference: this kit's plain loop of a fixed K, which never passes ``active``
            ref = {kk: settle(m, x, tok, frozen=kk - live, live=live) for kk in range(live + 1, k_max + 1)}
            for compact, path in ((0.0, "masked"), (1.0, "packed")):
                res = kloop_settle(m, experts, ctx, xs, pos, _HaltAfter(at), k_max, live, compact_below=compact)
                want_k = torch.clamp(at, max=k_max - live) + live  # (B,T)
                require(torch.equal(res.k, want_k), f"the K loop ({path}) gave K {res.k.tolist()}; expected "
                                                    f"{want_k.tolist()} from the halting rule")
                want = torch.stack([ref[int(kk)][b, t] for b, t, kk in
                                    ((b, t, want_k[b, t]) for b in range(B) for t in range(T))]).view(B, T, -1)
                diff = differs(res.h, want, rtol, atol)
                require(diff is None, f"in the real K loop ({path}), with positions halting after different steps, "
                                      f"a position's final state differs from a fixed loop of its own K{diff}; a "
                                      f"halted position's state must not move (do not write the state in place; "
                                      f"with `active`, update only active positions)")

    report.check("protocol", protocol)
    report.check("shapes", shapes)
    report.check("dtypes", lambda: check_dtypes(s, "the settled state"))
    report.check("slotwise", slotwise)
    report.check("positions", positions)
    report.check("incremental", incremental)
    report.check("halted", halted)
    check_shared(report, s, rtol, atol)
