"""The implementation of each ``parallax`` subcommand."""
from __future__ import annotations

import importlib

import json
import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import ConfigError, PluginError


def dispatch(args, out: Console, err: Console) -> int:
    cmd = {"list-plugins": "plugins"}.get(args.command, args.command)
    return globals()[f"cmd_{cmd.replace('-', '_')}"](args, out, err)


def load(args):
    """The command's recipe (``args.recipe`` with ``args.overrides``)."""
    from ..runs import load as load_recipe_of

    return load_recipe_of(args.recipe, args.overrides)


def cmd_run(args, out: Console, err: Console) -> int:
    from ..trainer import Trainer

    recipe = load(args)
    trainer = Trainer(recipe, console=err)
    summary = trainer.fit()
    if trainer.is_main:
        out.out(json.dumps(summary), highlight=False)
    return 0


def cmd_ls(args, out: Console, err: Console) -> int:
    from ..recipe import builtin_recipes

    table = Table("recipe", "runs with", "file")
    for name, path in builtin_recipes().items():
        first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
        table.add_row(name, first, str(path))
    out.print(table)
    return 0


def cmd_cp(args, out: Console, err: Console) -> int:
    from ..recipe import builtin_recipes

    shipped = builtin_recipes()
    name = Path(args.name).stem if args.name.endswith(".yaml") else args.name
    if name not in shipped:
        raise ConfigError(f"{args.name}: no built-in recipe of that name (built-in: {', '.join(shipped) or 'none'})")
    if not args.dest.strip():
        raise ConfigError("cp: DEST is empty; give a file name (my.yaml) or a directory (.)")
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / f"{name}.yaml"
    if dest.exists() and not args.force:
        raise ConfigError(f"{dest}: already exists; pass --force to overwrite")
    if not dest.parent.is_dir():
        raise ConfigError(f"{dest.parent}: directory does not exist")
    shutil.copyfile(shipped[name], dest)
    out.print(f"copied {name} to {dest}")
    return 0


def cmd_cat(args, out: Console, err: Console) -> int:
    from ..recipe import dump_recipe

    out.out(dump_recipe(load(args)), end="", highlight=False)
    return 0


def cmd_validate(args, out: Console, err: Console) -> int:
    import torch

    from ..model import build_model
    from ..registry import get_registry
    from ..build import build_data

    recipe = load(args)
    with torch.device("meta"):  # build-time checks (shapes, divisibility) without allocating
        build_model(recipe.model, build_data(recipe, get_registry()).info)
    out.print(f"{args.recipe}: valid ({recipe.model.type} model, {recipe.data.type} data)")
    return 0


def cmd_plugins(args, out: Console, err: Console) -> int:
    from ..registry import get_registry

    reg = get_registry()
    rows = [
        {"name": p.name, "version": p.version, "dist": p.dist, "builtin": p.builtin, "provides": p.provides,
         "hooks": p.hooks, "error": p.error}
        for p in reg.plugins.values()
    ]
    if args.json:
        out.out(json.dumps(rows, indent=2), highlight=False)
        return 0
    table = Table("plugin", "version", "provides", "status")
    for r in rows:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["provides"].items())
        status = "[green]ok[/]" if not r["error"] else f"[red]broken[/]: {r['error']}"
        table.add_row(r["name"], r["version"] or "?", provides, status)
    out.print(table)
    return 0


def cmd_new_plugin(args, out: Console, err: Console) -> int:
    from ..registry import get_registry
    from ..scaffold import new_plugin

    dest = Path(args.dest or args.name)
    written = new_plugin(args.name, args.kind, dest, get_registry())
    lines = [f"created the {args.kind} plugin '{args.name}' in {dest}:"]
    lines += [f"  {path.relative_to(dest)}" for path in written]
    lines += [f"next: pip install -e {dest} && pytest {dest}"]
    out.out("\n".join(lines), highlight=False)  # unwrapped, so the paths can be copied
    return 0


def cmd_eval(args, out: Console, err: Console) -> int:
    import torch

    from ..evaluate import evaluate
    from ..runs import open_run

    overrides = list(args.overrides)
    if args.data:
        overrides.append("data.files=" + json.dumps(args.data))
    run = open_run(args.run_dir, overrides)  # a data source without files rejects data.files in one line
    result = {"run": str(args.run_dir), "checkpoint": str(run.checkpoint),
              **evaluate(run.model, run.data, torch.device("cpu"), detailed=True)}
    if args.json:
        out.out(json.dumps(result), highlight=False)
        return 0
    metric = (f"accuracy {result['val_accuracy']:.4f}" if "val_accuracy" in result
              else f"perplexity {result['val_perplexity']:.3f}")
    k = f"  mean K {result['val_k_mean']:.2f}" if result.get("val_k_mean") is not None else ""  # models without a K loop
    out.print(f"{run.checkpoint}: val_loss {result['val_loss']:.4f}  {metric}{k}")
    hist = result.get("k_histogram", {})
    if hist:
        total = sum(hist.values())
        table = Table("K", "positions", "share", title="K histogram")
        for k, n in hist.items():
            table.add_row(str(k), str(n), f"{n / total:6.1%} " + "#" * round(40 * n / total))
        out.print(table)
        table = Table("quantile", "surprisal (nats)", "targets", "mean K", title="mean K per surprisal quantile (1 = least surprising)")
        for r in result["k_by_surprisal_quantile"]:
            table.add_row(str(r["quantile"]), f"{r['surprisal_min']:.2f} - {r['surprisal_max']:.2f} (mean {r['surprisal_mean']:.2f})",
                          str(r["n"]), f"{r['k_mean']:.2f}")
        out.print(table)
    return 0


def cmd_generate(args, out: Console, err: Console) -> int:
    import sys

    from rich.text import Text

    from ..generate import generate

    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens: must be at least 1")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError("--top-k: must be at least 1")
    from ..runs import open_text_run

    run, tok = open_text_run(args.run_dir, args.threads)
    prompt = tok.encode(args.prompt)
    res = generate(run.model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed, stop_id=tok.eos_id)
    if args.show_k and not run.model.has_k_loop:
        raise ConfigError(f"--show-k: {run.recipe.model.type} models have no K loop; drop --show-k")
    if args.show_k:
        k_max = run.model.k_max
        text = Text(args.prompt)
        for i, k in zip(res.ids, res.k):
            frac = (k - 1) / max(k_max - 1, 1)  # blue (few steps) to red (k_max)
            text.append(tok.decode([i]), style=f"rgb({int(255 * frac)},{int(80 + 60 * (1 - frac))},{int(255 * (1 - frac))})")
        out.print(text)
        out.print(f"[dim]colour: K from 1 (blue) to {k_max} (red)[/]")
    else:
        sys.stdout.write(args.prompt + tok.decode(res.ids) + "\n")
        sys.stdout.flush()
    k = f", mean K per generated token {res.k_mean:.2f} (k_max {run.model.k_max})" if run.model.has_k_loop else ""
    err.print(f"{len(res.ids)} tokens in {res.seconds:.2f} s: {res.tokens_per_s:.1f} tokens/s{k}", highlight=False)
    return 0


BENCHMARKS = ("memory", "kernels", "halting", "ablation", "compare", "dynamics", "generate", "seeds", "sweep")  # parallax/bench/<name>.py


def cmd_bench(args, out: Console, err: Console) -> int:
    if args.bench not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark '{args.bench}'; choose one of {', '.join(BENCHMARKS)}")
    # imported on demand: a benchmark's dependencies (triton, torch.compile) load only when it runs
    return importlib.import_module(f"parallax.bench.{args.bench}").run(args, out, err)
