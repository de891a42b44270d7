"""``parallax bench seeds``: train one recipe on several seeds and report the spread.

One seed is one draw: on recall the same recipe can reach 99 % on one seed and sit at the 34 %
answer-by-elimination plateau on the next. Each seed trains in its own process through the same
``Trainer`` that ``parallax run`` uses (``child.train_in_child``), into ``--out/seed-N`` (or a
temporary folder, removed after). With ``--jobs N`` several seeds train at once, each limited to
``train.threads = CPUs // N`` so that the cores are never oversubscribed: two torch processes with
the default thread count on two cores slow each other down many times over.

Reported for each seed: the final validation metric (``val_accuracy``, or ``val_perplexity`` for
text), the best one over the run's evaluations (from its metrics.jsonl), the first step at which it
reached ``--threshold`` (accuracy only), steps, training and wall seconds. Over the seeds: mean ±
sample std of the final and best metric, and the share of seeds whose final metric is at or above
the threshold.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.table import Table

from ..errors import ConfigError
from ..metrics import read_records
from . import widen

METRICS = (("val_accuracy", True), ("val_perplexity", False), ("val_loss", False))  # (name, higher is better)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_split(jobs: int, threads: int | None, cpus: int | None = None) -> int | None:
    """``train.threads`` for each of ``jobs`` concurrent runs: the recipe's own (None: torch's default)
    for one job; otherwise at most CPUs // jobs, so that jobs * threads <= CPUs."""
    cpus = cpus or cpu_count()
    if jobs < 1:
        raise ConfigError("--jobs: must be at least 1")
    if jobs > cpus:
        raise ConfigError(f"--jobs: {jobs} runs at once on {cpus} CPUs would oversubscribe them; "
                          f"use --jobs {cpus} or fewer")
    if jobs == 1:
        return threads
    share = cpus // jobs
    return min(threads, share) if threads else share


def metric_name(record: dict) -> tuple[str, bool]:
    for name, higher in METRICS:
        if name in record:
            return name, higher
    raise ConfigError("the run reported no validation metric (val_accuracy, val_perplexity or val_loss)")


def curve(metrics_file: Path, name: str) -> list[tuple[int, float]]:
    """(step, value) of every evaluation in a run's metrics.jsonl."""
    records = read_records(metrics_file) if metrics_file.is_file() else []
    # an evaluation record, not a training one
    return [(rec["step"], rec[name]) for rec in records if name in rec and "loss" not in rec]


def spread(values: list[float]) -> dict:
    """``{"mean", "std", "n"}``: the sample standard deviation (0 for one value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def at_step(points: list[tuple[int, float]], step: int | None) -> tuple[int, float] | None:
    """The last (step, value) evaluated at or before ``step``; None when none was (or no step is asked)."""
    if step is None:
        return None
    before = [(s, v) for s, v in points if s <= step]
    return before[-1] if before else None


def seed_row(seed: int, row: dict, run_dir: Path, threshold: float | None, step: int | None = None) -> dict:
    name, higher = metric_name(row)
    points = curve(run_dir / "metrics.jsonl", name)
    values = [v for _, v in points] or [row[name]]
    best = max(values) if higher else min(values)
    reached = None
    if threshold is not None and higher:
        reached = next((s for s, v in points if v >= threshold), None)
    out = {"seed": seed, "metric": name, "final": row[name], "best": best, "reached_at": reached}
    if step is not None:  # None where no evaluation came at or before the step
        common = at_step(points, step)
        out["at_step"] = {"step": common[0], "value": common[1]} if common else None
    return {**out, "steps": row["steps"], "stop": row["stop"], "train_seconds": row["train_seconds"],
            "wall_seconds": row["wall_seconds"], "curve": points,
            **{k: row[k] for k in ("val_loss", "val_bpb", "val_k_mean") if k in row}}


def summarise(rows: list[dict], threshold: float | None) -> dict:
    name = rows[0]["metric"]
    higher = dict(METRICS)[name]
    out = {"metric": name, "final": spread([r["final"] for r in rows]), "best": spread([r["best"] for r in rows]),
           "train_seconds": spread([r["train_seconds"] for r in rows])}
    if "at_step" in rows[0] and all(r["at_step"] for r in rows):
        out["at_step"] = spread([r["at_step"]["value"] for r in rows])
    for key in ("val_loss", "val_bpb"):  # text runs compare on these across tokenizers (bits per byte)
        if key != name and all(key in r for r in rows):
            out[key] = spread([r[key] for r in rows])
    if threshold is not None:
        ok = [r["final"] >= threshold if higher else r["final"] <= threshold for r in rows]
        out["threshold"] = threshold
        out["share_at_threshold"] = sum(ok) / len(ok)
    return out


def run_seeds(recipe: str, seeds: list[int], overrides: list[str], root: Path, jobs: int = 1,
              threshold: float | None = None, err=None, prefix: str = "", step: int | None = None) -> list[dict]:
    """Train ``recipe`` once per seed under ``root/<prefix>seed-N``; the per-seed rows, in seed order."""
    from ..recipe import load_recipe
    from .child import train_in_child

    recipe_cfg = load_recipe(recipe, overrides)  # bad input fails here, before anything trains
    threads = thread_split(jobs, recipe_cfg.train.threads)
    extra = [f"train.threads={threads}"] if threads else []
    dirs = [root / f"{prefix}seed-{s}" for s in seeds]
    taken = [d for d in dirs if d.exists()]
    if taken:
        raise ConfigError(f"--out: {taken[0]} already exists (an earlier run); give a new --out or remove that folder")

    def one(seed: int, run_dir: Path) -> dict:
        row = train_in_child(recipe, [*overrides, *extra, f"seed={seed}", f"out_dir={run_dir}"], run_dir, err)
        return seed_row(seed, row, run_dir, threshold, step)

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        return list(pool.map(one, seeds, dirs))
    finally:  # a failed run stops the sweep: the seeds not yet started are not started
        pool.shutdown(wait=True, cancel_futures=True)


def _check_seeds(seeds: list[int]) -> None:
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: {seeds} repeats a seed; each seed trains once")


def measure(recipe: str, seeds: list[int], overrides: list[str], threshold: float | None = None, jobs: int = 1,
            steps: int | None = None, minutes: float | None = None, out: str | Path | None = None, err=None,
            step: int | None = None) -> dict:
    from rich.console import Console

    from .child import budget_overrides

    err = err or Console(stderr=True)
    _check_seeds(seeds)
    base = ["train.progress=false", *budget_overrides(steps, minutes), *overrides]
    root = Path(out) if out else Path(tempfile.mkdtemp(prefix="parallax-seeds-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        rows = run_seeds(recipe, seeds, base, root, jobs, threshold, err, step=step)
    finally:
        if not out:
            shutil.rmtree(root, ignore_errors=True)
    for r in rows:
        r["run_dir"] = str(root / f"seed-{r['seed']}") if out else None
    return {"recipe": recipe, "overrides": overrides, "jobs": jobs, "seeds": rows,
            "summary": summarise(rows, threshold)}


def fmt(name: str, value: float) -> str:
    return f"{value:.1%}" if name == "val_accuracy" else f"{value:.4g}"


def fmt_spread(name: str, s: dict) -> str:
    if name == "val_accuracy":
        return f"{s['mean']:.1%} ± {100 * s['std']:.1f} pp"
    return f"{s['mean']:.4g} ± {s['std']:.2g}"


def run(args, out, err) -> int:
    result = measure(args.recipe, args.seeds, args.overrides, args.threshold, args.jobs, args.steps, args.minutes,
                     args.out, err, args.at_step)
    if args.json:
        out.out(json.dumps(result, indent=2), highlight=False)
        return 0
    s = result["summary"]
    name = s["metric"]
    reached = f"reached {args.threshold:g} at" if args.threshold is not None else "-"
    common = [f"at step <= {args.at_step}"] if args.at_step else []
    table = Table("seed", f"final {name}", "best", *common, reached,
                  "steps", "train s", "wall s", title=f"bench seeds {result['recipe']}")
    for r in result["seeds"]:
        point = r.get("at_step")
        cell = [f"{fmt(name, point['value'])} (step {point['step']})" if point else "-"] if args.at_step else []
        table.add_row(str(r["seed"]), fmt(name, r["final"]), fmt(name, r["best"]), *cell,
                      str(r["reached_at"]) if r["reached_at"] is not None else "-", str(r["steps"]),
                      f"{r['train_seconds']:.0f}", f"{r['wall_seconds']:.0f}")
    widen(out)
    out.print(table)
    line = f"final {fmt_spread(name, s['final'])}; best {fmt_spread(name, s['best'])} over {s['final']['n']} seeds"
    if "at_step" in s:
        line += f"; at step <= {args.at_step} {fmt_spread(name, s['at_step'])}"
    if "val_bpb" in s:
        line += f"; bits/byte {fmt_spread('val_bpb', s['val_bpb'])}"
    if "share_at_threshold" in s:
        line += f"; {s['share_at_threshold']:.0%} of seeds at or above {s['threshold']:g}"
    out.print(line + " (std: sample standard deviation)", highlight=False)
    return 0
