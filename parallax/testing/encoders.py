"""``assert_encoder_conforms``: the Encoder protocol, checked the way training and generation call it.

Shapes: B batch, T positions, d model width, V vocabulary. Tokens ``(B,T)`` -> observations ``(B,T,d)``.

Checks, by the name ``skip`` takes:
- protocol: subclasses ``parallax.Encoder``; ``Config`` forbids unknown keys and defaults ``type``.
- shapes: ``(B,T,d)``, and ``(1,1,d)`` for one input of a batch of one.
- dtypes: a floating output; float64 out when the encoder is in float64.
- causality: the observation at t does not change when inputs after t change.
- incremental: ``step`` one input at a time equals ``forward`` (skipped when ``step`` is not overridden:
  the encoder then does not support generation).
- tied_weight: None, or a ``(V,d)`` parameter of the encoder that a tied head may share.
- state_dict, safetensors, autocast, no_grad_then_live: the shared checks of ``conformance``.

Inputs are random tokens from ``info.vocab_size``; pass ``inputs`` for other modalities (an image
encoder, for example, with ``skip=("causality", "incremental")``).
"""
from __future__ import annotations

from typing import Any

import torch

from ..protocols import DataInfo, Encoder
from .conformance import (
    Subject,
    check_dtypes,
    check_protocol,
    check_shared,
    check_step_matches_forward,
    cut_points,
    require,
    require_causal,
    start,
)

CHECKS = ("protocol", "shapes", "dtypes", "causality", "incremental", "tied_weight")


def assert_encoder_conforms(
    encoder: type | str,
    config: dict | Any | None = None,
    *,
    d_model: int = 16,
    info: DataInfo | None = None,
    inputs: torch.Tensor | None = None,
    batch: int = 2,
    seq: int = 9,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    device: str | torch.device = "cpu",
    skip: tuple[str, ...] | list[str] = (),
) -> None:
    """Raise ``ConformanceError`` listing every check the encoder fails (see the module docstring)."""
    info = info or DataInfo(vocab_size=11)
    if inputs is None:
        if not info.vocab_size:
            raise ValueError("inputs: give example inputs, or an info with a vocab_size for random tokens")
        inputs = torch.randint(0, info.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))
    cls, name, label, build, report, dev = start("encoders", encoder, config, CHECKS, skip, d_model, info, device)
    inputs = inputs.to(dev)
    B, T = inputs.shape[:2]

    def example() -> tuple:
        return (inputs.clone().requires_grad_(inputs.is_floating_point()),)

    s = Subject.called(label, dev, build, example)

    def shapes() -> None:
        m = build(0)
        with torch.no_grad():
            out = m(inputs)
            require(tuple(out.shape) == (B, T, d_model), f"forward returned shape {tuple(out.shape)}; expected "
                                                         f"(B,T,d) = {(B, T, d_model)}")
            one = m(inputs[:1, :1])
            require(tuple(one.shape) == (1, 1, d_model), f"for one input of a batch of one, forward returned shape "
                                                         f"{tuple(one.shape)}; expected {(1, 1, d_model)}")

    def causality() -> None:
        m = build(0)
        with torch.no_grad():
            base = m(inputs)
            for p in cut_points(T):
                changed = inputs.clone()
                if inputs.is_floating_point():
                    changed[:, p:] += 1.0
                else:
                    changed[:, p:] = (changed[:, p:] + 1) % (info.vocab_size or int(inputs.max()) + 1)
                require_causal(m(changed), base, p, rtol, atol, "observation", "inputs")

    def tied_weight() -> None:
        m = build(0)
        w = m.tied_weight
        if w is None:
            return
        require(any(w is p for p in m.parameters()), "tied_weight must be one of the encoder's own parameters "
                                                     "(the table a tied output head shares)")
        if info.vocab_size:
            require(tuple(w.shape) == (info.vocab_size, d_model),
                    f"tied_weight has shape {tuple(w.shape)}; expected (V,d) = {(info.vocab_size, d_model)}")

    report.check("protocol", lambda: check_protocol(cls, Encoder, name))
    report.check("shapes", shapes)
    report.check("dtypes", lambda: check_dtypes(s, "forward"))
    report.check("causality", causality)
    report.check("incremental", lambda: check_step_matches_forward(s, Encoder.step, "input", rtol, atol))
    report.check("tied_weight", tied_weight)
    check_shared(report, s, rtol, atol)
