"""The implementation of each ``parallax`` subcommand."""
from __future__ import annotations

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
    """The command's recipe. When it names a component that no installed plugin provides and it
    comes with a checkpoint (it is a checkpoint's config.yaml, or train.resume=PATH names one), the
    checkpoint's metadata names the package to install, so the error says which."""
    from ..checkpoint import check_plugins
    from ..recipe import load_recipe
    from ..registry import get_registry

    try:
        return load_recipe(args.recipe, args.overrides)
    except PluginError:
        candidates = [Path(args.recipe).parent]
        candidates += [Path(o.split("=", 1)[1]) for o in args.overrides if o.startswith("train.resume=")]
        for path in candidates:
            if (path / "model.safetensors").is_file():
                check_plugins(path, get_registry())
        raise


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
    from ..trainer import build_data

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


def cmd_bench(args, out: Console, err: Console) -> int:
    if args.bench == "memory":
        from ..bench.memory import run

        return run(args, out, err)
    if args.bench == "kernels":
        from ..bench.kernels import run

        return run(args, out, err)
    if args.bench == "halting":
        from ..bench.halting import run

        return run(args, out, err)
    if args.bench == "ablation":
        from ..bench.ablation import run

        return run(args, out, err)
    raise ConfigError(f"unknown benchmark '{args.bench}'")
