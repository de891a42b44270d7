"""``assert_expert_conforms``: the Expert protocol, checked the way the K loop and generation call it.

Shapes: B batch, T positions, S_e the expert's ``slots``, d model width. Observations ``x (B,T,d)``,
workspace reads ``h_eff (B,T,d)``, proposals ``(B,T,S_e,d)``.

Checks, by the name ``skip`` takes:
- protocol: subclasses ``parallax.Expert``; ``Config`` forbids unknown keys and defaults ``type`` to
  the registered name; ``clock`` is "token" or "h"; ``slots`` is a positive int.
- shapes: ``(B,T,S_e,d)`` over all positions, and ``(1,1,S_e,d)`` for one position of a batch of one.
- dtypes: float32 in, float32 out; float64 in (the expert in float64), float64 out.
- clock: an h-clocked expert's proposals change with ``h_eff``; a token-clocked
  one's do not (the K loop computes them once, with ``h_eff=None``).
- causality: the proposal at t does not change when observations or ``h_eff`` after t change.
- h_locality: the proposal at t reads ``h_eff`` at t only (positions settle independently).
- incremental: ``context_step`` then ``propose``, one position at a time, equals ``context`` then
  ``propose`` over all positions.
- packed: for an h-clocked expert that sets ``packs``, packed queries (``rows=``; rows unevenly
  filled, one left out when there are more than 2) give the proposals of the same rows and positions.
- state_dict, safetensors, autocast, no_grad_then_live: the shared checks of ``conformance``.
"""
from __future__ import annotations

from typing import Any

import torch

from ..protocols import DataInfo, Expert
from .conformance import (
    Subject,
    changed_positions,
    check_dtypes,
    check_protocol,
    check_shared,
    cut_points,
    differs,
    perturbed,
    randn,
    require,
    require_causal,
    start,
)

CHECKS = ("protocol", "shapes", "dtypes", "clock", "causality", "h_locality", "incremental", "packed")


def assert_expert_conforms(
    expert: type | str,
    config: dict | Any | None = None,
    *,
    d_model: int = 16,
    info: DataInfo | None = None,
    batch: int = 2,
    seq: int = 9,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    device: str | torch.device = "cpu",
    skip: tuple[str, ...] | list[str] = (),
) -> None:
    """Raise ``ConformanceError`` listing every check the expert fails.

    ``expert`` is the class, or the name an installed plugin registers it under (which also checks
    the entry point). ``config`` holds options for its ``Config`` (defaults otherwise).
    """
    if seq < 3:
        raise ValueError("seq: the causality checks need at least 3 positions")
    cls, name, label, build, report, dev = start("experts", expert, config, CHECKS, skip, d_model,
                                                 info or DataInfo(vocab_size=11), device)
    probe = build(0)
    clock, slots = getattr(probe, "clock", None), getattr(probe, "slots", None)
    report.check("protocol", lambda: _protocol(cls, name, clock, slots))
    if report.failures:  # without a valid clock and slot count no other check means anything
        report.finish()
    B, T, d = batch, seq, d_model
    uses_h = clock == "h"

    def example() -> tuple:
        x = randn(B, T, d, seed=1, device=dev, grad=True)  # (B,T,d) observations
        h = randn(B, T, d, seed=2, device=dev, grad=True)  # (B,T,d) h_eff
        return x, h, torch.arange(T, device=dev)

    def forward(m, inputs) -> torch.Tensor:
        x, h, positions = inputs
        return m.propose(h if uses_h else None, m.context(x), positions)  # (B,T,S_e,d)

    def frozen_then_live(m, inputs) -> torch.Tensor:
        x, h, positions = inputs
        ctx = m.context(x)  # with gradient: the K loop computes contexts before it settles
        with torch.no_grad():
            for k in range(2):
                m.propose(h * (k + 2) if uses_h else None, ctx, positions)
        return m.propose(h if uses_h else None, ctx, positions)

    s = Subject(label, dev, build, example, forward, forward, frozen_then_live)

    def shapes() -> None:
        m = build(0)
        x, h, positions = example()
        with torch.no_grad():
            out = forward(m, (x, h, positions))
            require(isinstance(out, torch.Tensor), f"propose returned {type(out).__name__}, not a tensor")
            require(tuple(out.shape) == (B, T, slots, d),
                    f"propose returned shape {tuple(out.shape)}; expected (B,T,S_e,d) = {(B, T, slots, d)} "
                    f"with S_e = slots = {slots}")
            one = forward(m, (x[:1, :1], h[:1, :1], positions[:1]))
            require(tuple(one.shape) == (1, 1, slots, d),
                    f"for one position of a batch of one, propose returned shape {tuple(one.shape)}; "
                    f"expected {(1, 1, slots, d)}")

    def clock_() -> None:
        m = build(0)
        x, h, positions = example()
        with torch.no_grad():
            ctx = m.context(x)
            if uses_h:
                moved = changed_positions(m.propose(h, ctx, positions),
                                          m.propose(perturbed(h, slice(None)), ctx, positions), rtol, atol)
                require(bool(moved), "declares clock 'h' but its proposals do not change with h_eff at any position; "
                                     "declare clock = 'token' if they depend on the observations only")
                return
            alone = m.propose(None, ctx, positions)
            for other in (h, perturbed(h, slice(None))):
                try:
                    out = m.propose(other, ctx, positions)
                except Exception:  # refusing h_eff is fine: the K loop never passes it to a token clock
                    return
                moved = changed_positions(out, alone, rtol, atol)
                require(not moved, f"declares clock 'token' but its proposals change with h_eff (at position "
                                   f"{moved[0] if moved else 0}); the K loop computes token-clocked proposals once, "
                                   f"with h_eff=None, so declare clock = 'h'")

    def causality() -> None:
        m = build(0)
        x, h, positions = example()
        with torch.no_grad():
            base = forward(m, (x, h, positions))
            for p in cut_points(T):
                out = forward(m, (perturbed(x, slice(p, None)), perturbed(h, slice(p, None)), positions))
                require_causal(out, base, p, rtol, atol, "proposal", "observations and h_eff")

    def h_locality() -> None:
        if not uses_h:
            return
        m = build(0)
        x, h, positions = example()
        j = T // 2
        with torch.no_grad():
            moved = changed_positions(forward(m, (x, perturbed(h, [j]), positions)), forward(m, (x, h, positions)),
                                      rtol, atol)
        others = [t for t in moved if t != j]
        require(not others, f"the proposal at position {others[0] if others else 0} changed when only h_eff at "
                            f"position {j} changed; a position reads its own h_eff only (positions settle "
                            f"independently in the K loop)")

    def incremental() -> None:
        m = build(0)
        x, h, positions = example()
        with torch.no_grad():
            want = forward(m, (x, h, positions))
            outs, cache = [], None
            for t in range(T):
                step = m.context_step(x[:, t : t + 1], cache)
                require(isinstance(step, tuple) and len(step) == 2,
                        f"context_step must return (ctx, cache), got {type(step).__name__}")
                ctx, cache = step
                out = m.propose(h[:, t : t + 1] if uses_h else None, ctx, positions[t : t + 1])  # (B,1,S_e,d)
                require(tuple(out.shape) == (B, 1, slots, d),
                        f"at position {t} the incremental path returned shape {tuple(out.shape)}; "
                        f"expected {(B, 1, slots, d)}")
                outs.append(out)
            diff = differs(torch.cat(outs, dim=1), want, rtol, atol)
        require(diff is None, f"the incremental path (context_step, then propose, one position at a time) differs "
                              f"from the parallel path (context, then propose){diff}; context_step must carry in its "
                              f"cache what context reads from earlier positions")

    def packed() -> None:
        if not (uses_h and getattr(probe, "packs", False)):
            return
        m = build(0)
        x, h, positions = example()
        g = torch.Generator().manual_seed(3)
        active = torch.rand(B, T, generator=g) < 0.5  # (B,T) the queries, unevenly across rows
        active[0, -1] = active[-1, 0] = True
        if B > 2:
            active[1] = False  # a row with no query
        rows, pos = (t.to(dev) for t in active.nonzero(as_tuple=True))  # rows ascending
        with torch.no_grad():
            ctx = m.context(x)
            want = m.propose(h, ctx, positions)[rows, pos]  # (N,S_e,d)
            got = m.propose(h[rows, pos][None], ctx, pos, rows=rows)
        require(tuple(got.shape) == (1, rows.numel(), slots, d),
                f"packed queries returned shape {tuple(got.shape)}; expected {(1, rows.numel(), slots, d)}")
        diff = differs(got[0], want, rtol, atol)
        require(diff is None, f"packed queries (propose(h_eff (1,N,d), ctx, positions (N,), rows=rows)) differ from "
                              f"the proposals at the same rows and positions{diff}; each query must read its own "
                              f"row's context up to its own position, or leave packs unset")

    report.check("shapes", shapes)
    report.check("dtypes", lambda: check_dtypes(s, "propose"))
    report.check("clock", clock_)
    report.check("causality", causality)
    report.check("h_locality", h_locality)
    report.check("incremental", incremental)
    report.check("packed", packed)
    check_shared(report, s, rtol, atol)


def _protocol(cls: type, name: str | None, clock: Any, slots: Any) -> None:
    check_protocol(cls, Expert, name)
    require(clock in ("token", "h"), f"clock is {clock!r}; set the class attribute clock = 'token' (proposals from "
                                     f"observations only) or 'h' (recomputed from h_eff at every K step)")
    require(isinstance(slots, int) and not isinstance(slots, bool) and slots >= 1,
            f"slots is {slots!r}; set self.slots to the number of proposals per position (a positive int)")

