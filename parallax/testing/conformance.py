"""What every conformance check shares: a report of named checks, comparisons that say where two
outputs differ, and the checks that apply to every kind of component.

A kind's checker (``experts.py``, ``encoders.py``...) describes its component as a ``Subject``:
how to build a fresh one, an example input, and how the K loop calls it. The shared checks
then test the state-dict and safetensors round trips, autocast, and frozen steps under
``torch.no_grad()`` followed by a live step, exactly as training runs them.
"""
from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import state_tensors
from ..registry import get_registry
from ..schema import Spec


class ConformanceError(AssertionError):
    """A component breaks its protocol. The message names the component, then one line per failed check."""


class Broken(Exception):
    """One check failed; the message is a single line that says what is wrong and what to do."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise Broken(message)


# -- the component under test ----------------------------------------------------------------------
@dataclass
class Subject:
    """A component as the shared checks see it.

    ``build(seed)`` returns a fresh module in eval mode; ``example()`` the inputs of one call (a
    tuple; floating tensors require grad); ``forward(module, inputs)`` the parallel path's output
    tensor; ``live(module, inputs)`` the output of one step with gradient as the K loop's live step
    computes it; ``frozen_then_live(module, inputs)`` the same output after frozen steps under
    ``torch.no_grad()``.
    """

    label: str
    device: torch.device
    build: Callable[[int], nn.Module]
    example: Callable[[], tuple]
    forward: Callable[[nn.Module, tuple], torch.Tensor]
    live: Callable[[nn.Module, tuple], torch.Tensor]
    frozen_then_live: Callable[[nn.Module, tuple], torch.Tensor]

    @classmethod
    def called(cls, label: str, device: torch.device, build: Callable[[int], nn.Module],
               example: Callable[[], tuple]) -> Subject:
        """A component that runs as one call ``module(input)`` (encoders, decoders): its frozen steps
        are the same call under no_grad."""

        def forward(m: nn.Module, inputs: tuple) -> torch.Tensor:
            return m(inputs[0])

        def frozen_then_live(m: nn.Module, inputs: tuple) -> torch.Tensor:
            with torch.no_grad():
                m(inputs[0])
            return m(inputs[0])

        return cls(label, device, build, example, forward, forward, frozen_then_live)


def resolve(kind: str, component: Any) -> tuple[type, str | None]:
    """(class, registry name) for a class, or for a name registered by an installed plugin."""
    if isinstance(component, str):
        return get_registry().get(kind, component, where=f"{kind[:-1]} '{component}'"), component
    if not isinstance(component, type):
        raise TypeError(f"expected a {kind[:-1]} class or its registry name, got {type(component).__name__}")
    return component, None


def label_of(kind: str, cls: type, name: str | None) -> str:
    return f"{kind[:-1]} '{name}' ({cls.__name__})" if name else f"{kind[:-1]} {cls.__name__}"


def make_config(label: str, cls: type, name: str | None, config: Any) -> Spec:
    """The validated ``Config`` for ``config`` (a dict, a Config, or None for the defaults)."""
    schema = getattr(cls, "Config", None)
    if not (isinstance(schema, type) and issubclass(schema, Spec)):
        raise ConformanceError(f"{label}: declares no nested `class Config(parallax.Spec)` with its recipe options")
    if isinstance(config, BaseModel):
        return config
    data = dict(config or {})
    if name is not None:
        data.setdefault("type", name)
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise ConformanceError(f"{label}: Config rejects {data}: {' '.join(str(e).split())}") from None


def builder(label: str, cls: type, cfg: Spec, d_model: int, info: Any, device: torch.device,
            dtype: torch.dtype = torch.float32) -> Callable[[int], nn.Module]:
    """``build(seed)``: a fresh instance, initialised under ``seed`` without touching the caller's RNG."""

    def build(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            module = cls(cfg, d_model, info)
        return module.to(device=device, dtype=dtype).eval()

    try:
        build(0)
    except Exception as e:
        raise ConformanceError(f"{label}: the constructor raised {_first_line(e)}") from None
    return build


def check_protocol(cls: type, base: type, name: str | None) -> None:
    """The class subclasses the protocol and its Config forbids unknown keys and names its type."""
    require(issubclass(cls, base), f"subclass parallax.{base.__name__} (and nn.Module) so the core can call it")
    schema = cls.Config
    require(schema.model_config.get("extra") == "forbid",
            "Config allows unknown keys; remove model_config's extra='allow' (parallax.Spec forbids them) so that "
            "a misspelled option is an error, not ignored")
    default = schema.model_fields["type"].default
    require(isinstance(default, str), "Config must give `type` a default: the name the plugin registers")
    if name is not None:
        require(default == name, f"Config.type defaults to '{default}' but the plugin registers it as '{name}'")


# -- running checks --------------------------------------------------------------------------------
class Report:
    """Runs named checks, keeps going after a failure, and raises one ``ConformanceError`` at the end."""

    def __init__(self, label: str, names: tuple[str, ...], skip: tuple[str, ...] | list[str]):
        unknown = sorted(set(skip) - set(names))
        if unknown:
            raise ValueError(f"skip: unknown check(s) {', '.join(unknown)} (checks: {', '.join(names)})")
        self.label, self.names, self.skip = label, names, set(skip)
        self.failures: list[tuple[str, str]] = []

    def check(self, name: str, fn: Callable[[], None]) -> None:
        assert name in self.names, name
        if name in self.skip:
            return
        try:
            fn()
        except Broken as e:
            self.failures.append((name, str(e)))
        except Exception as e:  # a crash inside a check is a failure of that check, not of the kit
            self.failures.append((name, f"raised {_first_line(e)}"))

    def finish(self) -> None:
        if self.failures:
            lines = "\n".join(f"  - {name}: {msg}" for name, msg in self.failures)
            n = len(self.failures)
            raise ConformanceError(f"{self.label} fails {n} conformance check{'s' if n > 1 else ''}:\n{lines}")


class Start(NamedTuple):
    """What every ``assert_*_conforms`` begins with: the class, its name, a builder and a report."""

    cls: type
    name: str | None
    label: str
    build: Callable[[int], nn.Module]
    report: Report
    device: torch.device


def start(kind: str, component: Any, config: Any, checks: tuple[str, ...], skip, d_model: int, info: Any,
          device: str | torch.device) -> Start:
    cls, name = resolve(kind, component)
    label = label_of(kind, cls, name)
    dev = torch.device(device)
    build = builder(label, cls, make_config(label, cls, name, config), d_model, info, dev)
    return Start(cls, name, label, build, Report(label, (*checks, *SHARED), skip), dev)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# -- comparing outputs -----------------------------------------------------------------------------
def differs(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float, along: str = "position") -> str | None:
    """None when close; else where they first differ along dim 1 (``along`` names it) and by how much."""
    if tuple(got.shape) != tuple(want.shape):
        return f"in shape: {tuple(got.shape)} vs {tuple(want.shape)}"
    got, want = got.detach().double(), want.detach().double()
    bad = ~torch.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)  # (B,T,...)
    if not bool(bad.any()):
        return None
    where = ""
    if got.ndim >= 2:
        t = int(bad.flatten(2).any(-1).any(0).nonzero()[0]) if got.ndim > 2 else int(bad.any(0).nonzero()[0])
        where = f" at {along} {t}"
    return f"{where} (max |difference| {float((got - want).abs().max()):.3g}, rtol={rtol}, atol={atol})"


def changed_positions(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> list[int]:
    """Positions (dim 1) at which ``a`` and ``b (B,T,...)`` are not close."""
    bad = ~torch.isclose(a.detach().double(), b.detach().double(), rtol=rtol, atol=atol)
    return [int(t) for t in bad.transpose(0, 1).flatten(1).any(-1).nonzero().flatten()]


def perturbed(t: torch.Tensor, positions: slice | list[int], seed: int = 7) -> torch.Tensor:
    """A copy of ``t (B,T,...)`` with fresh noise added at ``positions`` along dim 1."""
    out = t.detach().clone()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(out[:, positions].shape, generator=gen, dtype=torch.float64)
    out[:, positions] += noise.to(device=out.device, dtype=out.dtype)
    return out


def randn(*shape: int, seed: int, device: torch.device, grad: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device).requires_grad_(grad)


def scalar_loss(out: torch.Tensor) -> torch.Tensor:
    """A fixed random projection of ``out`` to a scalar, so every element gets its own gradient."""
    weights = randn(*out.shape, seed=11, device=out.device)
    return (out.float() * weights).sum()


def cut_points(T: int) -> list[int]:
    """Where the causality checks cut a sequence of T positions: early, middle and last."""
    return sorted({1, T // 2, T - 1})


def require_causal(changed: torch.Tensor, base: torch.Tensor, cut: int, rtol: float, atol: float,
                   what: str, reads: str) -> None:
    """``changed`` came from inputs that differ from ``base``'s at positions >= ``cut`` only."""
    leaked = [t for t in changed_positions(changed, base, rtol, atol) if t < cut]
    require(not leaked, f"the {what} at position {leaked[0] if leaked else 0} changed when only {reads} at "
                        f"positions >= {cut} changed; position t may read {reads} at positions <= t only")


def check_step_matches_forward(s: Subject, protocol_step: Callable, unit: str, rtol: float, atol: float) -> None:
    """Encoders and decoders: ``step`` one position at a time equals ``forward``. An implementation
    that keeps the protocol's default ``step`` does not support generation, and is not checked."""
    m = s.build(0)
    if type(m).step is protocol_step:
        return
    (inputs,) = s.example()
    with torch.no_grad():
        outs, cache = [], None
        for t in range(inputs.shape[1]):
            out, cache = m.step(inputs[:, t : t + 1], cache)  # (B,1,...)
            outs.append(out)
        diff = differs(torch.cat(outs, dim=1), m(inputs), rtol, atol)
    require(diff is None, f"step, one {unit} at a time, differs from forward{diff}; the cache must carry what "
                          f"forward reads from earlier {unit}s")


# -- the checks every kind shares ------------------------------------------------------------------
SHARED = ("state_dict", "safetensors", "autocast", "no_grad_then_live")


def check_shared(report: Report, s: Subject, rtol: float, atol: float) -> None:
    """Run the checks of ``SHARED`` on ``s``, then raise if any check of the report failed."""
    report.check("state_dict", lambda: check_state_dict(s, rtol, atol))
    report.check("safetensors", lambda: check_safetensors(s, rtol, atol))
    report.check("autocast", lambda: check_autocast(s))
    report.check("no_grad_then_live", lambda: check_frozen_then_live(s, rtol, atol))
    report.finish()


def check_dtypes(s: Subject, what: str) -> None:
    """float32 in, float32 out; the module and its floating inputs in float64, float64 out."""
    inputs = s.example()
    with torch.no_grad():
        out = s.forward(s.build(0), inputs)
        require(out.dtype == torch.float32, f"{what} returned {out.dtype} for float32 inputs; return the inputs' dtype")
        wide = tuple(t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)
        out = s.forward(s.build(0).double(), wide)
        require(out.dtype == torch.float64, f"in float64 {what} returned {out.dtype}; follow the inputs' dtype "
                                            f"rather than fixing one")


def check_state_dict(s: Subject, rtol: float, atol: float) -> None:
    a, b = s.build(0), s.build(1)
    inputs = s.example()
    with torch.no_grad():
        want = s.forward(a, inputs)
        b.load_state_dict(a.state_dict(), strict=True)
        diff = differs(s.forward(b, inputs), want, rtol, atol)
    require(diff is None, f"a fresh instance that loads the state dict gives other outputs{diff}; keep every "
                          f"tensor the output depends on in a parameter or a registered buffer")


def check_safetensors(s: Subject, rtol: float, atol: float) -> None:
    a = s.build(0)
    inputs = s.example()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        try:
            save_file(state_tensors(a), str(path))
        except Exception as e:
            raise Broken(f"safetensors cannot save the state dict ({_first_line(e)}); register each tensor under "
                         f"one name only (keep a tied weight in the module that owns it)") from None
        loaded = load_file(str(path))
    b = s.build(1)
    with torch.no_grad():
        want = s.forward(a, inputs)
        b.load_state_dict(loaded, strict=True)
        diff = differs(s.forward(b, inputs), want, rtol, atol)
    require(diff is None, f"after a safetensors round trip the outputs differ{diff}; keep every tensor the "
                          f"output depends on in a parameter or a registered buffer")


def autocast_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def check_autocast(s: Subject) -> None:
    module = s.build(0)
    inputs = s.example()
    with torch.no_grad():
        want = s.forward(module, inputs)
    dtype = autocast_dtype(s.device)
    with torch.autocast(s.device.type, dtype=dtype), warnings.catch_warnings():
        # torch notes that RMSNorm's float32 weight skips its fused path on bf16 input: expected here
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        out = s.live(module, inputs)
    require(tuple(out.shape) == tuple(want.shape),
            f"under {dtype} autocast the output has shape {tuple(out.shape)}, not {tuple(want.shape)}")
    require(out.is_floating_point() and bool(torch.isfinite(out).all()),
            f"under {dtype} autocast the output is not finite; compute sensitive reductions in float32")
    if out.requires_grad:
        scalar_loss(out).backward()
        bad = [n for n, p in module.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        require(not bad, f"under {dtype} autocast the gradients of {', '.join(bad)} are not finite")


def check_frozen_then_live(s: Subject, rtol: float, atol: float) -> None:
    """Frozen steps under no_grad, then a live step, give the live step's own output and gradients."""
    module = s.build(0)
    inputs = s.example()
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def run(fn) -> tuple[torch.Tensor, list]:
        module.zero_grad(set_to_none=True)
        for t in leaves:
            t.grad = None
        out = fn(module, inputs)
        if out.requires_grad:
            scalar_loss(out).backward()
        grads = [p.grad for p in module.parameters()] + [t.grad for t in leaves]
        return out.detach(), grads

    want, want_grads = run(s.live)
    trainable = bool(leaves) or any(p.requires_grad for p in module.parameters())
    require(not trainable or any(g is not None for g in want_grads),
            "the live step's output carries no gradient; do not detach it or compute it under torch.no_grad()")
    got, got_grads = run(s.frozen_then_live)
    diff = differs(got, want, rtol, atol)
    require(diff is None, f"after frozen steps under torch.no_grad() the live step's output differs{diff}; "
                          f"do not keep state between calls")
    names = [n for n, _ in module.named_parameters()] + [f"input {i}" for i in range(len(leaves))]
    for name, g, w in zip(names, got_grads, want_grads):
        if w is None:
            continue
        require(g is not None, f"after frozen steps under torch.no_grad() '{name}' gets no gradient from the live "
                               f"step; do not reuse tensors computed under no_grad in the live step")
        diff = differs(g, w, rtol * 10, atol * 10, along="index")
        require(diff is None, f"after frozen steps under torch.no_grad() the gradient of '{name}' differs{diff}")
