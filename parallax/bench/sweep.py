"""``parallax bench sweep``: a grid over any recipe keys, each point trained on every seed.

``--set KEY=V1,V2,...`` (repeatable) gives each key's values, parsed as YAML as overrides are;
commas inside brackets, braces or quotes do not split, so ``--set k=[1,2],[3,4]`` is two values.
The grid is the product of the keys' values; every point is validated before anything trains. Each
point and seed trains in its own process (``bench seeds``), one at a time or ``--jobs N`` at once
with ``train.threads`` split so that the cores are never oversubscribed, under ``--out/pNN-seed-S``.

The best point is chosen on validation: the highest mean final ``val_accuracy`` over the seeds (or
the lowest ``val_perplexity`` / ``val_loss`` for text). Validation here is the recipe's held-out
split; a sweep that picks on it reports an optimistic number for the chosen point, as any tuning on
a validation split does (a separate test split is the recipe's to provide).
"""
from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from pathlib import Path

from rich.table import Table

from ..errors import ConfigError
from . import widen
from .seeds import METRICS, _check_seeds, fmt, fmt_spread, run_seeds, summarise


def split_values(text: str) -> list[str]:
    """``"1,2,[3,4]"`` -> ``["1", "2", "[3,4]"]``: commas inside brackets, braces or quotes do not split."""
    values, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(cur)
            cur = ""
            continue
        cur += ch
    values.append(cur)
    return [v.strip() for v in values]


def parse_sets(sets: list[str]) -> list[tuple[str, list[str]]]:
    axes: list[tuple[str, list[str]]] = []
    for item in sets:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not key or not values.strip():
            raise ConfigError(f"--set: '{item}' is not KEY=V1,V2,... (e.g. --set train.optimizer.lr=1e-3,3e-3)")
        vals = split_values(values)
        if any(v == "" for v in vals):
            raise ConfigError(f"--set {key}: an empty value in '{values}'")
        if key in [k for k, _ in axes]:
            raise ConfigError(f"--set {key}: given twice; list all its values in one --set")
        axes.append((key, vals))
    if not axes:
        raise ConfigError("bench sweep: give at least one --set KEY=V1,V2,...")
    return axes


def grid(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    keys = [k for k, _ in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def measure(recipe: str, sets: list[str], seeds: list[int], overrides: list[str], jobs: int = 1,
            steps: int | None = None, minutes: float | None = None, out: str | Path | None = None, err=None) -> dict:
    from rich.console import Console

    from ..recipe import load_recipe
    from .child import budget_overrides

    err = err or Console(stderr=True)
    _check_seeds(seeds)
    points = grid(parse_sets(sets))
    base = ["train.progress=false", *budget_overrides(steps, minutes), *overrides]
    for p in points:  # every point is valid before anything trains
        load_recipe(recipe, [*base, *(f"{k}={v}" for k, v in p.items())])
    root = Path(out) if out else Path(tempfile.mkdtemp(prefix="parallax-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for i, p in enumerate(points):
            rows = run_seeds(recipe, seeds, [*base, *(f"{k}={v}" for k, v in p.items())], root, jobs, None, err,
                             prefix=f"p{i:02d}-")
            for r in rows:
                r["run_dir"] = str(root / f"p{i:02d}-seed-{r['seed']}") if out else None
            results.append({"point": p, "seeds": rows, "summary": summarise(rows, None)})
    finally:
        if not out:
            shutil.rmtree(root, ignore_errors=True)
    name = results[0]["summary"]["metric"]
    higher = dict(METRICS)[name]
    means = [r["summary"]["final"]["mean"] for r in results]
    best = max(range(len(means)), key=lambda i: means[i] if higher else -means[i])
    budget = ({"steps": steps} if steps is not None else {"minutes": minutes} if minutes is not None
              else {"recipe": True})
    return {"recipe": recipe, "overrides": overrides, "budget": budget, "seeds": seeds, "metric": name,
            "points": results, "best": {"index": best, "point": results[best]["point"]}}


def run(args, out, err) -> int:
    result = measure(args.recipe, args.set, args.seeds, args.overrides, args.jobs, args.steps, args.minutes,
                     args.out, err)
    if args.json:
        out.out(json.dumps(result, indent=2), highlight=False)
        return 0
    name = result["metric"]
    keys = list(result["points"][0]["point"])
    table = Table("", *keys, f"final {name} (mean ± std)", "best (mean ± std)", "per seed",
                  title=f"bench sweep {result['recipe']}, seeds {' '.join(map(str, result['seeds']))}")
    for i, r in enumerate(result["points"]):
        s = r["summary"]
        table.add_row("*" if i == result["best"]["index"] else "", *(r["point"][k] for k in keys),
                      fmt_spread(name, s["final"]), fmt_spread(name, s["best"]),
                      " ".join(fmt(name, x["final"]) for x in r["seeds"]))
    widen(out)
    out.print(table)
    out.print(f"* the best point on validation (mean final {name} over the seeds)", highlight=False)
    return 0
