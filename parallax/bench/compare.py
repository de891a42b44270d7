"""``parallax bench compare``: train several recipes under one budget and report them side by side.

Every recipe runs with the same overrides, budget (``--steps N`` or ``--minutes M``), seed and data
(checked before anything trains), each in a fresh process through the same ``Trainer`` that
``parallax run`` uses, so one run's allocator state and warm caches do not leak into the next.
Runs are written under ``--out`` (or a temporary folder), never into a recipe's own ``out_dir``.
Validation runs once, at the end; intermediate evaluations and checkpoints are turned off so that
they do not eat the budget (an override can turn them back on).

Reported for each recipe:
- ``params``, split into ``embedding`` (``nn.Embedding`` tables; a tied head is counted there once)
  and ``non_embedding`` (everything else);
- ``tokens_per_s``: training input tokens per second over the logged windows (setup and the final
  evaluation excluded), and ``tokens_per_s_median``, the median window (robust to a stall when
  another job takes the cores for a while);
- the final evaluation: ``val_loss`` and ``val_accuracy`` or ``val_perplexity`` (and, for text,
  ``val_bpb``, bits per byte, which compare across tokenizers), and ``val_k_mean`` for a model with a
  K loop (K budget ``k_max`` at evaluation);
- ``peak_bytes``, measured from the moment the data and the model are built to the end of training:
  on CUDA, the peak allocated memory (``memory: cuda_peak_allocated``, weights included); on CPU,
  the growth of the process's peak resident set (``memory: cpu_peak_rss_growth``: optimizer state,
  activations and allocator overhead, as the OS sees them);
- ``saved_bytes``: bytes autograd saves for backward in one training step of the trained model at
  its full K budget (device-independent; the quantity ``bench memory`` tracks against K);
- ``compiled`` and ``compile_seconds``: whether ``train.compile`` compiled the run, and the time of
  the steps that compiled, which tokens/s leaves out.

``--compiled`` trains every recipe twice, eager (``train.compile=false``) and compiled
(``train.compile=true``), one after the other, and gives each compiled row ``compiled_speedup``: its
median-window tokens/s over its eager twin's.

``--match-params [TARGET]`` first scales the width (``n_embd`` or ``d_model``) of every baseline
(every recipe after the first whose model is not the CWS) to the valid width whose parameter count
is nearest TARGET: an integer, ``Nx`` (N times the first recipe's count), or by default the first
recipe's count. ``--match-on`` chooses the total or the non-embedding count.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import torch
from rich.table import Table

from ..errors import ConfigError
from . import widen
from .child import budget_overrides, count_params, tokens_per_s, train_in_child  # noqa: F401 - re-exported
from .seeds import _check_seeds, fmt, fmt_spread, spread


def _info(recipe, registry):
    from ..build import build_data

    with torch.device("meta"):
        return build_data(recipe, registry).info


def recipe_params(recipe, info, registry) -> dict:
    """Parameter counts of a recipe's model, built on the meta device (nothing is allocated)."""
    from ..budget import meta_model

    return count_params(meta_model(recipe, info, registry))


def parse_target(text: str | None, reference: int) -> int:
    """``None`` -> the reference count; ``"2x"`` / ``"1.5x"`` -> a multiple of it; ``"400000"`` -> itself."""
    if text is None:
        return reference
    try:
        value = float(text[:-1]) * reference if text.lower().endswith("x") else float(text)
    except ValueError:
        raise ConfigError(f"--match-params: '{text}' is not a parameter count (e.g. 400000) "
                          "or a multiple (e.g. 2x)") from None
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"--match-params: '{text}' must give a positive parameter count")
    return int(round(value))


def match_width(ref: str, overrides: list[str], target: int, on: str, registry) -> dict | None:
    """The width of ``ref``'s model whose ``on`` count ('total' or 'non_embedding') is nearest ``target``.

    Returns ``{"key", "width", "params", "target", "on"}``, or None when the model has no width option.
    Widths that the model's Config rejects (heads that do not divide it, odd RoPE head widths) are
    skipped; the count grows with the width, so the nearest valid width is found by bisection.
    """
    from ..recipe import load_recipe

    recipe = load_recipe(ref, overrides, registry)
    key = registry.get("models", recipe.model.type).width_key
    if key is None:
        return None
    info = _info(recipe, registry)
    field = "params" if on == "total" else "non_embedding"  # on: total | non_embedding

    def count(width: int) -> int | None:
        try:
            r = load_recipe(ref, [*overrides, f"model.{key}={width}"], registry)
        except ConfigError:
            return None
        return recipe_params(r, info, registry)[field]

    valid = [w for w in range(1, 8193) if _valid(recipe.model, key, w)]
    lo, hi = 0, len(valid) - 1
    while lo < hi:  # first valid width whose count reaches the target
        mid = (lo + hi) // 2
        c = count(valid[mid])
        if c is not None and c >= target:
            hi = mid
        else:
            lo = mid + 1
    options = list(valid[max(lo - 1, 0): lo + 1])
    best = min(options, key=lambda w: abs((count(w) or 0) - target))
    return {"key": f"model.{key}", "width": best, "params": count(best), "target": target, "on": on}


def _valid(cfg, key: str, width: int) -> bool:
    try:
        type(cfg).model_validate({**cfg.model_dump(), key: width})
    except ValueError:
        return False
    return True




def _same_seed_and_data(recipes: list, refs: list[str]) -> None:
    first = recipes[0]
    for ref, r in zip(refs[1:], recipes[1:]):
        if r.seed != first.seed:
            raise ConfigError(f"{ref}: seed {r.seed} differs from {refs[0]}'s {first.seed}; "
                              "pass seed=N to use one seed for all")
        a = first.data.model_dump(mode="json", serialize_as_any=True)
        b = r.data.model_dump(mode="json", serialize_as_any=True)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            k = "type" if "type" in diff else diff[0]  # another data source explains every other difference
            raise ConfigError(f"{ref}: data.{k} is {b.get(k)!r} but {refs[0]} has {a.get(k)!r}; the recipes must share "
                              f"their data block (override data.{k}=... for all)")


def measure(refs: list[str], overrides: list[str], steps: int | None = None, minutes: float | None = None,
            out: str | Path | None = None, match: str | None | bool = False, match_on: str = "total", err=None,
            compiled: bool = False) -> dict:
    """Train every recipe in ``refs`` under one budget; return ``{"device", "budget", "runs": [...]}``.

    ``match``: False leaves widths alone; None matches the first recipe's count; a string is a
    ``--match-params`` TARGET. ``compiled``: each recipe eager, then compiled. Every recipe and
    override is validated before anything trains."""
    from rich.console import Console

    from ..build import resolve_device
    from ..recipe import load_recipe
    from ..registry import get_registry

    err = err or Console(stderr=True)
    if steps is not None and steps < 1:
        raise ConfigError("--steps: must be at least 1")
    if minutes is not None and not minutes > 0:
        raise ConfigError("--minutes: must be positive")
    registry = get_registry()
    quiet = ["train.eval_every=1000000000", "train.save_every=1000000000", "train.progress=false"]
    base = [*quiet, *budget_overrides(steps, minutes), *overrides]
    recipes = []
    for ref in refs:
        try:
            recipes.append(load_recipe(ref, base, registry))
        except ConfigError as e:
            raise ConfigError(f"{ref}: {e}" if not str(e).startswith(ref) else str(e)) from None
    _same_seed_and_data(recipes, refs)

    per_recipe = [list(base) for _ in refs]
    matched: list[dict | None] = [None] * len(refs)
    if match is not False:
        ref_counts = recipe_params(recipes[0], _info(recipes[0], registry), registry)
        target = parse_target(match, ref_counts["params" if match_on == "total" else "non_embedding"])
        for i, ref in enumerate(refs[1:], 1):
            matched[i] = match_width(ref, base, target, match_on, registry)
            if matched[i]:
                per_recipe[i].append(f"{matched[i]['key']}={matched[i]['width']}")
        if not any(matched):
            raise ConfigError("--match-params: no recipe after the first has a baseline model with a width option "
                              "(n_embd or d_model) to scale")

    names = _run_names(refs)
    if compiled:  # each recipe as its eager and its compiled twin, side by side
        refs = [r for r in refs for _ in range(2)]
        matched = [m for m in matched for _ in range(2)]
        per_recipe = [[*o, f"train.compile={c}"] for o in per_recipe for c in ("false", "true")]
        names = [f"{n}{c}" for n in names for c in ("", "-compiled")]
    root = Path(out) if out else Path(tempfile.mkdtemp(prefix="parallax-compare-"))
    taken = [n for n in names if (root / n).exists()]
    if taken:
        raise ConfigError(f"--out: {root / taken[0]} already exists (an earlier comparison); give a new --out "
                          f"or remove that folder")
    root.mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        for ref, name, recipe_overrides, m in zip(refs, names, per_recipe, matched):
            run_dir = root / name
            row = train_in_child(ref, [*recipe_overrides, f"out_dir={run_dir}"], run_dir, err)
            runs.append({"recipe": ref, "model": load_recipe(ref, recipe_overrides, registry).model.type,
                         **({"matched": m} if m else {}), **row, "run_dir": str(run_dir) if out else None})
    finally:
        if not out:
            shutil.rmtree(root, ignore_errors=True)
    if compiled:
        for eager, comp in zip(runs[::2], runs[1::2]):
            a, b = eager.get("tokens_per_s_median"), comp.get("tokens_per_s_median")
            comp["compiled_speedup"] = b / a if a and b else None
    budget = ({"steps": steps} if steps is not None
              else {"minutes": minutes} if minutes is not None else {"recipe": True})
    return {"device": str(resolve_device(recipes[0].train)), "budget": budget, "overrides": overrides,
            "seed": recipes[0].seed, "runs": runs}


def _run_names(refs: list[str]) -> list[str]:
    names: list[str] = []
    for ref in refs:
        stem = Path(ref).stem
        names.append(stem if stem not in names else f"{stem}-{len(names)}")
    return names


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """Positional items -> (recipes, overrides): ``key=value`` and ``~key`` are overrides."""
    is_override = ["=" in i or i.startswith("~") for i in items]
    n = is_override.index(True) if True in is_override else len(items)
    if any(is_override[n:]) and not all(is_override[n:]):
        raise ConfigError("bench compare: give the recipes first, then the key=value overrides")
    if n == 0:
        raise ConfigError("bench compare: name at least one recipe "
                          "(e.g. recipes/recall.yaml recipes/recall_transformer.yaml)")
    return items[:n], items[n:]


def run(args, out, err) -> int:
    recipes, overrides = split_items(args.items)
    if getattr(args, "seeds", None):  # mean ± std per recipe over several seeds

        result = compare_seeds(recipes, overrides, args.seeds, args.steps, args.minutes, args.out, args.match_params,
                               args.match_on.replace("-", "_"), err)
        if args.json:
            out.out(json.dumps(result, indent=2), highlight=False)
        else:
            print_compare_seeds(result, out)
        return 0
    result = measure(recipes, overrides, args.steps, args.minutes, args.out, args.match_params,
                     args.match_on.replace("-", "_"), err, compiled=getattr(args, "compiled", False))
    if args.json:
        out.out(json.dumps(result, indent=2), highlight=False)
        return 0
    memory = result["runs"][0]["memory"]
    table = Table("recipe", "model", "params", "non-emb", "steps", "tok/s", "val loss", "acc/ppl", "bpb", "K",
                  "peak" if memory == "cuda_peak_allocated" else "RSS+", "saved",
                  title=f"bench compare on {result['device']}, budget {_budget(result['budget'])}")
    def early(r):  # under a time budget, a run may reach its recipe's max_steps first
        return "*" if "minutes" in result["budget"] and r["stop"] == "max_steps" else ""

    for r in result["runs"]:
        width = f" {r['matched']['key'].split('.')[-1]}={r['matched']['width']}" if "matched" in r else ""
        metric = (f"{r['val_accuracy']:.1%}" if "val_accuracy" in r
                  else f"{r['val_perplexity']:.2f}" if "val_perplexity" in r else "-")
        table.add_row(
            Path(r["recipe"]).stem + (" (compiled)" if r.get("compiled") else ""), r["model"] + width,
            _si(r["params"]), _si(r["non_embedding"]),
            f"{r['steps']}{early(r)}",
            f"{_si(r['tokens_per_s'])} ({_si(r['tokens_per_s_median'])})" if r.get("tokens_per_s") else "-",
            f"{r['val_loss']:.4f}", metric,
            f"{r['val_bpb']:.4f}" if "val_bpb" in r else "-", f"{r['val_k_mean']:.2f}" if "val_k_mean" in r else "-",
            f"{r['peak_bytes'] / 2**20:.0f}M" if r["peak_bytes"] is not None else "n/a",
            f"{r['saved_bytes'] / 2**20:.1f}M",
        )
    widen(out)
    out.print(table)
    for r in result["runs"]:
        if "compiled_speedup" in r:
            speed = f"{r['compiled_speedup']:.2f}x" if r["compiled_speedup"] else "n/a"
            note = "" if r["compiled"] else " (train.compile=true did not compile it)"
            out.print(f"{Path(r['recipe']).stem}: compiled trains at {speed} the eager tokens/s (median windows); "
                      f"compile time {r['compile_seconds'] or 0:.1f} s, left out of tokens/s{note}", highlight=False)
    peak = ("peak: torch.cuda.max_memory_allocated over training" if memory == "cuda_peak_allocated"
            else "RSS+: growth of the peak resident set over the training loop (CPU)")
    if any(early(r) for r in result["runs"]):
        out.print("* reached the recipe's train.max_steps (which also sets the LR schedule) before the time budget",
                  highlight=False)
    out.print(f"{peak}; saved: bytes autograd keeps for one training step at the full K budget; tok/s: training "
              f"tokens per second over the run (median logged window), setup and final evaluation excluded; "
              f"bpb: validation bits per byte (text); K: mean K at evaluation; M = MiB", highlight=False)
    return 0


def _si(n: float) -> str:
    """195588 -> '195.6k'."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def _budget(b: dict) -> str:
    return f"{b['steps']} steps" if "steps" in b else f"{b['minutes']} min" if "minutes" in b else "the recipes' own"


# -- bench compare --seeds ---------------------------------------------------------------------------
def compare_seeds(refs: list[str], overrides: list[str], seeds: list[int], steps=None, minutes=None, out=None,
                  match=False, match_on="total", err=None) -> dict:
    """``bench compare`` once per seed (``seed=N`` for every recipe, under ``--out/seed-N``); per recipe
    the mean ± std over the seeds of each validation figure, and each seed's row."""
    _check_seeds(seeds)
    per_seed = [measure(refs, [*overrides, f"seed={s}"], steps, minutes,
                                Path(out) / f"seed-{s}" if out else None, match, match_on, err) for s in seeds]
    recipes = []
    for i, ref in enumerate(refs):
        rows = [r["runs"][i] for r in per_seed]
        stats = {k: spread([row[k] for row in rows]) for k in ("val_loss", "val_accuracy", "val_perplexity",
                                                              "tokens_per_s", "train_seconds") if k in rows[0]}
        recipes.append({"recipe": ref, "model": rows[0]["model"], "params": rows[0]["params"], **stats,
                        "per_seed": [{"seed": s, **row} for s, row in zip(seeds, rows)]})
    return {"device": per_seed[0]["device"], "budget": per_seed[0]["budget"], "overrides": overrides,
            "seeds": seeds, "recipes": recipes}


def print_compare_seeds(result: dict, out) -> None:
    table = Table("recipe", "model", "params", "val loss", "acc/ppl", "per seed", "train s",
                  title=f"bench compare on {result['device']}, seeds {' '.join(map(str, result['seeds']))}")
    for r in result["recipes"]:
        name = "val_accuracy" if "val_accuracy" in r else "val_perplexity" if "val_perplexity" in r else "val_loss"
        table.add_row(Path(r["recipe"]).stem, r["model"], f"{r['params']:,}", fmt_spread("val_loss", r["val_loss"]),
                      fmt_spread(name, r[name]), " ".join(fmt(name, x[name]) for x in r["per_seed"]),
                      f"{r['train_seconds']['mean']:.0f}")
    widen(out)
    out.print(table)
    out.print("mean ± sample std over the seeds", highlight=False)
