"""``assert_decoder_conforms``: the MotorDecoder protocol, checked the way training and generation call it.

Shapes: B batch, T positions, d model width, V vocabulary, C classes. Settled states ``h (B,T,d)``
-> logits ``(B,T,V)`` (a sequence decoder) or ``(B,C)`` (a classifier).

Checks, by the name ``skip`` takes:
- protocol: subclasses ``parallax.MotorDecoder``; ``Config`` forbids unknown keys and defaults ``type``.
- shapes: ``(B,T,V)`` when ``info`` has a vocabulary, else ``(B,C)``; and for a batch of one.
- dtypes: float32 in, float32 out; float64 out when the decoder and ``h`` are in float64.
- causality: (sequence decoders) the logits at t do not change when states after t change.
- incremental: ``step`` one state at a time equals ``forward`` (skipped when ``step`` is not
  overridden: the decoder then does not support generation).
- tie: after ``tie(weight)`` with the encoder's ``(V,d)`` table, forward keeps its shapes and the table
  is not one of the decoder's parameters (the model saves it once, with the encoder).
- state_dict, safetensors, autocast, no_grad_then_live: the shared checks of ``conformance``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..protocols import DataInfo, MotorDecoder
from .conformance import (
    Subject,
    check_dtypes,
    check_protocol,
    check_shared,
    check_step_matches_forward,
    cut_points,
    perturbed,
    randn,
    require,
    require_causal,
    start,
)

CHECKS = ("protocol", "shapes", "dtypes", "causality", "incremental", "tie")


def assert_decoder_conforms(
    decoder: type | str,
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
    """Raise ``ConformanceError`` listing every check the decoder fails (see the module docstring)."""
    if seq < 3:
        raise ValueError("seq: the causality checks need at least 3 positions")
    info = info or DataInfo(vocab_size=11)
    cls, name, label, build, report, dev = start("decoders", decoder, config, CHECKS, skip, d_model, info, device)
    B, T, d = batch, seq, d_model
    sequence = bool(info.vocab_size)
    expected = (B, T, info.vocab_size) if sequence else (B, info.num_classes)

    def example() -> tuple:
        return (randn(B, T, d, seed=3, device=dev, grad=True),)  # (B,T,d) settled states

    s = Subject.called(label, dev, build, example)

    def shapes() -> None:
        m = build(0)
        (h,) = example()
        with torch.no_grad():
            out = m(h)
            require(tuple(out.shape) == expected, f"forward returned shape {tuple(out.shape)}; expected {expected} "
                                                  f"({'(B,T,V)' if sequence else '(B,C)'})")
            one = m(h[:1])
            require(tuple(one.shape) == (1, *expected[1:]), f"for a batch of one, forward returned shape "
                                                            f"{tuple(one.shape)}; expected {(1, *expected[1:])}")

    def causality() -> None:
        if not sequence:
            return
        m = build(0)
        (h,) = example()
        with torch.no_grad():
            base = m(h)
            for p in cut_points(T):
                require_causal(m(perturbed(h, slice(p, None))), base, p, rtol, atol, "logits", "settled states")

    def tie() -> None:
        if not sequence:
            return
        m = build(0)
        (h,) = example()
        with torch.no_grad():
            untied = m(h)
        table = nn.Parameter(randn(info.vocab_size, d, seed=4, device=dev))  # (V,d) the encoder's embedding
        m.tie(table)
        require(all(p is not table for p in m.parameters()),
                "tie registered the shared table as a parameter of the decoder; keep it out of the module tree "
                "(for example in a plain list) so the model's state dict holds it once, under the encoder")
        with torch.no_grad():
            out = m(h)
        require(tuple(out.shape) == expected,
                f"after tie, forward returned shape {tuple(out.shape)}; expected {expected}")
        # a wrapper that swaps the encoder's parameter (FSDP's gathered weights) ties again: the head
        # must follow the new table, or it trains a stale copy
        if tuple(untied.shape) == expected and torch.equal(untied, out):
            return  # this decoder does not tie (its option is off)
        again = nn.Parameter(table.detach() * 2)  # (V,d)
        m.tie(again)
        with torch.no_grad():
            moved = m(h)
        require(not torch.equal(moved, out),
                "a second tie(weight) left the head on the first table; point it at the new one (FSDP replaces "
                "the encoder's parameter and ties again)")

    report.check("protocol", lambda: check_protocol(cls, MotorDecoder, name))
    report.check("shapes", shapes)
    report.check("dtypes", lambda: check_dtypes(s, "forward"))
    report.check("causality", causality)
    report.check("incremental", lambda: check_step_matches_forward(s, MotorDecoder.step, "state", rtol, atol))
    report.check("tie", tie)
    check_shared(report, s, rtol, atol)
