"""How stable is a trained CWS's K loop, and how much gradient reaches each part through the live steps?

    python examples/k_loop_stability.py RUN_DIR [--k 16] [--eps 1e-3] [--json]

RUN_DIR is a run's out_dir (its newest checkpoint) or one step-XXXXXXXX/ folder. On one validation
batch, with halting off so that every position takes every step:

- **divergence of two nearby states** (the Lyapunov-style probe of "failed TRM trajectories show a
  larger positive Lyapunov exponent"): the initial state h_0 and h_0 + eps * RMS(h_0) * noise are
  settled for j = 1..K steps; ``growth_j = RMS(h_j - h'_j) / RMS(h_0 - h'_0)``, and
  ``lyapunov = log(growth_K) / K`` per step (below 0 the loop forgets where it started: contraction;
  above 0 nearby states fly apart);
- **gradient through the live steps**: one training-mode forward and backward at each K budget in
  ``--grad-k``, the loss's gradient norm per part of the model (encoder, experts, workspace,
  decoder). Under the O(1)-memory contract only the last ``live_steps`` steps carry gradient, so this
  shows what the frozen steps leave the optimizer to work with at each depth.
"""
from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

from parallax.kloop import settle
from parallax.protocols import WorkspaceState
from parallax.runs import open_run


@torch.no_grad()
def divergence(model, inputs: torch.Tensor, k: int, eps: float, seed: int = 0) -> list[float]:
    """growth_j for j = 1..k: how far two settles that start eps apart end up, relative to eps."""
    x = model.encoder(inputs)  # (B,T,d)
    positions = torch.arange(x.shape[1])
    contexts = [e.context(x) for e in model.experts]
    ws = model.workspace
    init = ws.init_state
    g = torch.Generator().manual_seed(seed)
    base = init(x, sum(e.slots for e in model.experts))
    noise = torch.randn(base.h.shape, generator=g) * eps * base.h.pow(2).mean().sqrt()  # (B,T,d)
    d0 = noise.pow(2).mean().sqrt().item()

    def settled(j: int, h0: torch.Tensor) -> torch.Tensor:
        ws.init_state = lambda x_, n: WorkspaceState(h0, base.cum)
        try:
            return settle(ws, model.experts, contexts, x, positions, None, j, min(model.live_steps, j),
                          compact_below=0.0).h
        finally:
            ws.init_state = init

    return [(settled(j, base.h) - settled(j, base.h + noise)).pow(2).mean().sqrt().item() / d0
            for j in range(1, k + 1)]


def grad_norms(model, batch: dict, k: int) -> dict[str, float]:
    """The loss's gradient norm per top-level part of the model, one training step at budget k."""
    model.train()
    out = model(batch["inputs"], k_max=k)
    loss = F.cross_entropy(out.logits.float().flatten(0, -2), batch["targets"].flatten(), ignore_index=-100)
    model.zero_grad(set_to_none=True)
    loss.backward()
    parts: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            part = name.split(".")[0] if not name.startswith("experts.") else ".".join(name.split(".")[:2])
            parts[part] = parts.get(part, 0.0) + p.grad.pow(2).sum().item()
    model.zero_grad(set_to_none=True)
    model.eval()
    return {"loss": loss.item(), **{p: math.sqrt(v) for p, v in sorted(parts.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--k", type=int, default=None, help="steps to follow (default: the run's k_max)")
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--grad-k", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = open_run(args.run_dir)
    model = run.model
    k = args.k or model.k_max
    batch = next(iter(run.data.val_batches()))
    growth = divergence(model, batch["inputs"], k, args.eps)
    result = {"checkpoint": str(run.checkpoint), "k": k, "eps": args.eps, "growth": growth,
              "lyapunov": math.log(max(growth[-1], 1e-30)) / k,
              "grad": {str(g): grad_norms(model, batch, g) for g in args.grad_k}}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['checkpoint']}: growth of a {args.eps:g} perturbation over {k} steps: "
          + " ".join(f"{x:.3g}" for x in growth) + f"; lyapunov {result['lyapunov']:+.3f} per step")
    for g, row in result["grad"].items():
        print(f"  K={g}: " + "  ".join(f"{p} {v:.3g}" for p, v in row.items()))


if __name__ == "__main__":
    main()
