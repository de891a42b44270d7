"""Time the packed K loop against the masked one on a recipe's model, with a chosen share of positions halted.

    OMP_NUM_THREADS=1 python examples/packed_settle_timing.py recipes/recall.yaml --halted 0.5

Each position gets a halting step from a seeded draw: a share ``--halted`` of them halt after step
``--at`` and the rest run to k_max (``early``), or every position halts after a step drawn uniformly
from 1..k_max (``uniform``). The same halting steps are settled masked (``compact_below=0``), packed
(``compact_below=1``, the default) and packed with ``--also`` values of ``compact_below``; the
settles are interleaved, and the median (and the minimum) of ``--repeats`` is reported with the position-steps each
computed; ``live_only`` (a settle with no frozen step) gives what every settle spends outside the
frozen steps, so that the frozen steps' own times can be compared. The model is the recipe's,
untrained: the time of a K step does not depend on its weights.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import parallax
from parallax.build import build_data
from parallax.kloop import settle
from parallax.model import build_model
from parallax.recipe import load_recipe
from parallax.registry import get_registry


class HaltEach(parallax.HaltingRule):
    def __init__(self, stop):
        self.stop = stop

    def update(self, raw, prev_raw, memo, k):
        return self.stop == k


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--halted", type=float, default=0.5, help="share of positions that halt early (early)")
    ap.add_argument("--at", type=int, default=2, help="the step after which they halt (early)")
    ap.add_argument("--pattern", choices=["early", "uniform"], default="early")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--also", type=float, nargs="*", default=[0.75])
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    data = build_data(recipe, get_registry())
    model = build_model(recipe.model, data.info).eval()
    inputs = next(iter(data.val_batches(args.batch_size or recipe.train.batch_size)))["inputs"]
    B, T = inputs.shape
    k_max = model.k_max
    g = torch.Generator().manual_seed(0)
    if args.pattern == "early":
        stop = torch.where(torch.rand(B, T, generator=g) < args.halted, args.at, k_max + 1)
    else:
        stop = torch.randint(1, k_max + 1, (B, T), generator=g)
    settings = {"masked": 0.0, "packed": 1.0, **{f"packed@{c}": c for c in args.also}, "live_only": None}
    with torch.no_grad():
        x = model.encoder(inputs)
        ctx = [e.context(x) for e in model.experts]
        pos = torch.arange(T)

        def run(c):
            t0 = time.perf_counter()
            k = model.live_steps if c is None else k_max  # None: no frozen step, what every settle pays besides
            res = settle(model.workspace, model.experts, ctx, x, pos, HaltEach(stop), k, model.live_steps,
                         compact_below=c or 0.0)
            return time.perf_counter() - t0, res

        times = {name: [] for name in settings}
        work, ks = {}, {}
        for c in settings.values():
            run(c)  # warm-up
        names = list(settings)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                seconds, res = run(settings[name])
                times[name].append(seconds)
                work[name], ks[name] = res.work, res.k
    assert all(torch.equal(ks[n], ks["masked"]) for n in names if n != "live_only")
    med = {name: statistics.median(times[name]) for name in names}
    # the frozen steps alone: each settle less what it spends outside them (token slots, the live step)
    frozen = {name: med[name] - med["live_only"] for name in names}
    live_work = work["live_only"]
    low = {name: min(times[name]) for name in names}
    rows = {name: {"seconds": round(med[name], 5), "time_vs_masked": round(med[name] / med["masked"], 3),
                   "min_time_vs_masked": round(low[name] / low["masked"], 3),
                   "frozen_seconds": round(frozen[name], 5),
                   "frozen_time_vs_masked": round(frozen[name] / frozen["masked"], 3),
                   "position_steps": work[name], "work_vs_masked": round(work[name] / work["masked"], 3),
                   "frozen_work_vs_masked": round((work[name] - live_work) / (work["masked"] - live_work), 3)}
            for name in names if name != "live_only"}
    rows["live_only"] = {"seconds": round(med["live_only"], 5), "position_steps": live_work}
    print(json.dumps({"batch_shape": [B, T], "k_max": k_max, "pattern": args.pattern,
                      "mean_k": round(ks["masked"].float().mean().item(), 3),
                      "halted_share": args.halted if args.pattern == "early" else None,
                      "torch_threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
