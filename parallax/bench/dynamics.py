"""``parallax bench dynamics``: how a trained CWS's workspace state moves from one K step to the next.

Seed 001 reports that at k_max 4 the map contracts monotonically, and that at k_max 24 it learns to
oscillate, overshoot and quench. This measures it. On validation batches, with halting fixed so
that every position takes every step, the state after k steps ``h_k (B,T,d)`` is read for
k = 0..K (``h_0`` the initial state; the K loop is run once per k, since positions settle
independently and the loop is deterministic in evaluation). Per position and step:

- ``move_k = RMS_d(h_k - h_{k-1})``: how far the state moved;
- ``ratio_k = move_k / move_{k-1}``: below 1 the step contracted, above 1 it grew;
- ``cos_k = cos(h_k - h_{k-1}, h_{k-1} - h_{k-2})``: below 0 the state turned back (an overshoot);
- ``raw_move_k``: the K loop's own trace, RMS(raw_k - raw_{k-1}) of the attention logits, which is
  what the momentum halting rule reads.

Summaries: the share of positions whose movement never grows by more than 1% from one step to the
next (``monotone_share``: contraction all the way), the mean number of such rises per position,
the share of steps that turn back (``reversal_share``), and the final movement over the peak
movement (``final_over_peak``: near 0 a quenched state, near 1 one still moving).
"""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from rich.table import Table

from ..errors import ConfigError
from . import widen

RISE = 1.01  # a step "grows" when its movement exceeds the previous one by more than 1%


def summarize(h: torch.Tensor, raw: torch.Tensor) -> dict:
    """States ``h (K+1,N,d)`` (h_0..h_K of N positions) and the raw trace ``(K-1,N)`` -> the report."""
    k = h.shape[0] - 1
    delta = (h[1:] - h[:-1]).float()  # (K,N,d)
    move = delta.pow(2).mean(-1).sqrt()  # (K,N)
    cos = F.cosine_similarity(delta[1:], delta[:-1], dim=-1)  # (K-1,N)
    ratio = move[1:] / move[:-1].clamp_min(1e-12)  # (K-1,N)
    rises = (ratio > RISE).sum(0)  # (N,)
    rows = []
    for i in range(k):
        rows.append({
            "k": i + 1, "move_mean": move[i].mean().item(), "move_median": move[i].median().item(),
            "ratio_median": ratio[i - 1].median().item() if i else None,
            "reversal_share": (cos[i - 1] < 0).float().mean().item() if i else None,
            "raw_move_mean": raw[i - 1].float().mean().item() if i and i - 1 < raw.shape[0] else None,  # from step 2
        })
    return {
        "k": k, "positions": h.shape[1], "rows": rows,
        "monotone_share": (rises == 0).float().mean().item(),
        "rises_per_position": rises.float().mean().item(),
        "reversal_share": (cos < 0).float().mean().item() if k > 1 else 0.0,
        "final_over_peak": (move[-1] / move.max(0).values.clamp_min(1e-12)).median().item(),
    }


def trajectories(model, batches, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The states h_0..h_k of every position of ``batches`` (K+1,N,d) and their raw trace (K-1,N)."""
    hs, raws = [], []
    for inputs in batches:
        h, raw = model.trajectory(inputs, k)  # (K+1,B,T,d), (K-1,B,T)
        hs.append(h.flatten(1, 2))  # (K+1,B*T,d)
        raws.append(raw.flatten(1))  # (K-1,B*T)
    return torch.cat(hs, 1), torch.cat(raws, 1)


def measure(model, batches: list[torch.Tensor], k: int) -> dict:
    return summarize(*trajectories(model, batches, k))


def run(args, out, err) -> int:
    from ..runs import open_run

    run_ = open_run(args.run_dir)
    model = run_.model
    if not model.has_k_loop:
        raise ConfigError(f"{args.run_dir}: bench dynamics needs a model with a K loop, not '{run_.recipe.model.type}'")
    k = args.k or model.k_max  # argparse has checked both counts are >= 1
    batches = [b["inputs"] for _, b in zip(range(args.batches), run_.data.val_batches())]
    result = {"run": str(args.run_dir), "checkpoint": str(run_.checkpoint), "k_max": model.k_max,
              **measure(model, batches, k)}
    if args.json:
        out.out(json.dumps(result, indent=2), highlight=False)
        return 0
    table = Table("step k", "RMS move of h (mean)", "median", "move_k/move_k-1 (median)", "turns back",
                  "RMS move of raw",
                  title=f"workspace dynamics of {run_.checkpoint} "
                        f"(k_max {model.k_max}, {k} steps, {result['positions']} positions)")
    for r in result["rows"]:
        table.add_row(str(r["k"]), f"{r['move_mean']:.4f}", f"{r['move_median']:.4f}",
                      f"{r['ratio_median']:.3f}" if r["ratio_median"] is not None else "-",
                      f"{r['reversal_share']:.1%}" if r["reversal_share"] is not None else "-",
                      f"{r['raw_move_mean']:.4f}" if r["raw_move_mean"] is not None else "-")
    widen(out)
    out.print(table)
    out.print(f"monotone contraction: {result['monotone_share']:.1%} of positions; rises per position "
              f"{result['rises_per_position']:.2f}; steps that turn back {result['reversal_share']:.1%}; "
              f"final/peak movement (median) {result['final_over_peak']:.3f}", highlight=False)
    return 0
