"""The implementation of each ``parallax`` subcommand."""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import ConfigError, Interrupted


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
    if dest.exists() and dest.resolve() == shipped[name].resolve():
        raise ConfigError(f"cp: {dest} is the built-in recipe '{name}' itself; give another file name (my.yaml)")
    if dest.exists() and not args.force:
        raise ConfigError(f"{dest}: already exists; pass --force to overwrite")
    if not dest.parent.is_dir():
        raise ConfigError(f"{dest.parent}: directory does not exist")
    dest.write_text(_renamed(shipped[name].read_text(encoding="utf-8"), name, dest), encoding="utf-8")
    out.print(f"copied {name} to {dest} (out_dir: runs/{dest.stem})", highlight=False, soft_wrap=True)
    return 0


def _renamed(text: str, name: str, dest: Path) -> str:
    """A built-in recipe's text for its copy at ``dest``: out_dir ``runs/<dest's stem>``, and the comments
    that name the recipe file or its runs naming the copy's, so that the copy's runs do not land in the
    original's."""
    found = re.search(r"(?m)^out_dir:\s*(\S+)\s*$", text)
    new_out = f"runs/{dest.stem}"
    if found:
        old_out = found.group(1).strip("'\"")
        text = text[: found.start()] + f"out_dir: {new_out}" + text[found.end():]
        text = re.sub(rf"(?<![\w/.-]){re.escape(old_out)}(?![\w.-])", new_out, text)
    else:
        text = f"out_dir: {new_out}\n" + text if not text.startswith("#") else re.sub(
            r"^((?:#.*\n)+)", lambda m: m.group(1) + f"out_dir: {new_out}\n", text, count=1)
    text = re.sub(rf"(?<![\w/.-])recipes/{re.escape(name)}\.yaml(?![\w.-])", str(dest), text)
    return re.sub(r"^# parallax run \S+", f"# parallax run {dest}", text, count=1)


def cmd_cat(args, out: Console, err: Console) -> int:
    from ..recipe import dump_recipe

    if args.doc:
        from ..recipe_doc import document, format_docs

        out.out(format_docs(document(load(args))), end="", highlight=False)
        return 0
    out.out(dump_recipe(load(args)), end="", highlight=False)
    return 0


def cmd_validate(args, out: Console, err: Console) -> int:
    from ..budget import check_fits, meta_model
    from ..build import build_data, resolve_device, tokens_per_example
    from ..registry import get_registry

    recipe = load(args)
    data = build_data(recipe, get_registry())
    # what the options alone say the data is (a text recipe's vocabulary), so that validating
    # reads no data and needs no network; else the data source reads its data to tell
    info = data.declared_info()
    read = info is None
    # build-time checks (shapes, divisibility) on the meta device, and the memory bound, without allocating
    model = meta_model(recipe, data.info if read else info)
    positions = None if not read else tokens_per_example(data)
    if positions is not None:
        check_fits(recipe, model, positions, resolve_device(recipe.train))
    note = "" if read else f"; data not read: built for {_described(info)}"
    out.print(f"{args.recipe}: valid ({recipe.model.type} model, {recipe.data.type} data{note})",
              highlight=False, soft_wrap=True)
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


def _described(info) -> str:
    fields = {"vocab_size": info.vocab_size, "num_classes": info.num_classes, "input_shape": info.input_shape}
    return ", ".join(f"{k} {v}" for k, v in fields.items() if v is not None) or "no sizes"


def cmd_eval(args, out: Console, err: Console) -> int:
    from ..build import named_device
    from ..evaluate import evaluate
    from ..runs import open_run

    overrides = list(args.overrides)
    if args.data:
        overrides.append("data.files=" + json.dumps(args.data))
    device = named_device(args.device)
    run = open_run(args.run_dir, overrides, device=device)  # a data source without files rejects data.files in one line
    result = {"run": str(args.run_dir), "checkpoint": str(run.checkpoint),
              **evaluate(run.model, run.data, device, detailed=True)}
    if args.json:
        out.out(json.dumps(result), highlight=False)
        return 0
    metric = (f"accuracy {result['val_accuracy']:.4f}" if "val_accuracy" in result
              else f"perplexity {result['val_perplexity']:.3f}")
    metric += f"  bits/byte {result['val_bpb']:.4f}" if "val_bpb" in result else ""
    k = (f"  mean K {result['val_k_mean']:.2f}" if result.get("val_k_mean") is not None
         else "")  # models without a K loop
    out.print(f"{run.checkpoint}: val_loss {result['val_loss']:.4f}  {metric}{k}")
    if result.get("by_kind"):
        table = Table("kind", "positions", "accuracy", "mean K", title="per kind")
        for name, r in result["by_kind"].items():
            table.add_row(name, str(r["n"]), "-" if r["accuracy"] is None else f"{r['accuracy']:.1%}",
                          "-" if r["k_mean"] is None else f"{r['k_mean']:.2f}")
        out.print(table)
    hist = result.get("k_histogram", {})
    if hist:
        total = sum(hist.values())
        table = Table("K", "positions", "share", title="K histogram")
        for k, n in hist.items():
            table.add_row(str(k), str(n), f"{n / total:6.1%} " + "#" * round(40 * n / total))
        out.print(table)
        table = Table("quantile", "surprisal (nats)", "targets", "mean K",
                      title="mean K per surprisal quantile (1 = least surprising)")
        for r in result["k_by_surprisal_quantile"]:
            table.add_row(str(r["quantile"]),
                          f"{r['surprisal_min']:.2f} - {r['surprisal_max']:.2f} (mean {r['surprisal_mean']:.2f})",
                          str(r["n"]), f"{r['k_mean']:.2f}")
        out.print(table)
    return 0


def cmd_generate(args, out: Console, err: Console) -> int:
    import sys

    from ..build import named_device
    from ..generate import generate
    from .kview import render, uses_colour

    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens: must be at least 1")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError("--top-k: must be at least 1")
    from ..runs import open_text_run

    run, tok = open_text_run(args.run_dir, args.threads, device=named_device(args.device), compile=args.compile)
    if args.show_k and not run.model.has_k_loop:
        raise ConfigError(f"--show-k: {run.recipe.model.type} models have no K loop; drop --show-k")
    prompt = tok.encode(args.prompt)
    stream = not (args.json or args.show_k)
    pending: list[int] = []

    def show(token_id: int, k) -> None:  # plain text streams as it comes: an interrupt keeps what was shown
        pending.append(token_id)
        piece = tok.decode(pending)
        if not piece.endswith("\ufffd"):  # a character split across byte-level tokens waits for its rest
            sys.stdout.write(piece)
            sys.stdout.flush()
            pending.clear()

    if stream:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    res = generate(run.model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed, stop_id=tok.eos_id,
                   on_token=show if stream else None)
    k_max = run.model.k_max if run.model.has_k_loop else None
    pieces = [tok.decode([i]) for i in res.ids]
    if args.json:
        out.out(json.dumps({
            "prompt": args.prompt, "prompt_ids": prompt, "text": tok.decode(res.ids), "k_max": k_max,
            "tokens": [{"id": i, "text": p, "k": k, "logprob": lp}
                       for i, p, k, lp in zip(res.ids, pieces, res.k, res.logprob)],
            "k_mean": res.k_mean, "seconds": res.seconds, "tokens_per_s": res.tokens_per_s,
            "interrupted": res.interrupted,
        }), highlight=False)
    elif args.show_k:
        text, legend = render(args.prompt, pieces, res.k, k_max, uses_colour(out))
        out.print(text, highlight=False, soft_wrap=True)  # unwrapped: the text is the model's
        out.print(legend, highlight=False, soft_wrap=True)
    else:
        sys.stdout.write(tok.decode(pending) + "\n")
        sys.stdout.flush()
    k = f", mean K per generated token {res.k_mean:.2f} (k_max {k_max})" if k_max else ""
    err.print(f"{len(res.ids)} tokens in {res.seconds:.2f} s: {res.tokens_per_s:.1f} tokens/s{k}", highlight=False)
    if res.interrupted:
        raise Interrupted(f"interrupted after {len(res.ids)} generated tokens; they are printed above")
    return 0


def cmd_export(args, out: Console, err: Console) -> int:
    from ..export import export, push

    dest = export(args.run_dir, args.to, force=args.force)
    files = ", ".join(sorted(p.name for p in dest.iterdir()))
    out.print(f"exported {args.run_dir} to {dest}: {files}", highlight=False)
    if args.push:
        out.print(f"pushed to {push(dest, args.push)}", highlight=False)
    return 0


# each is parallax/bench/<name>.py
BENCHMARKS = ("memory", "kernels", "halting", "ablation", "compare", "dynamics", "generate", "seeds", "sweep")


def cmd_bench(args, out: Console, err: Console) -> int:
    if args.bench not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark '{args.bench}'; choose one of {', '.join(BENCHMARKS)}")
    # imported on demand: a benchmark's dependencies (triton, torch.compile) load only when it runs
    return importlib.import_module(f"parallax.bench.{args.bench}").run(args, out, err)


def cmd_convert_checkpoint(args, out: Console, err: Console) -> int:
    from ..checkpoint import LEGACY_STATE, convert_legacy

    if not args.trust_pickle:
        raise ConfigError(f"convert-checkpoint: the {LEGACY_STATE} of {args.path} is a pickle, which can run code; "
                          f"pass --trust-pickle to state that you trust its source (it is read without running code)")
    done = convert_legacy(args.path)
    for path in done:
        out.out(f"converted {path}", highlight=False)
    if not done:
        err.print(f"{args.path}: every checkpoint is in the current format already; nothing to convert",
                  highlight=False)
    return 0


def _needs_matplotlib(command: str) -> bool:
    """Whether matplotlib is missing; if so, say so in one line (the caller exits 2)."""
    from ..plot import MissingMatplotlib, require_matplotlib

    try:
        require_matplotlib()
    except MissingMatplotlib as e:
        import sys

        sys.stderr.write(f"parallax {command}: {e}\n")
        return True
    return False


def cmd_plot(args, out: Console, err: Console) -> int:
    from ..plot import run_dir_of, run_figures

    if _needs_matplotlib("plot"):
        return 2
    made = run_figures(args.run_dir, args.dynamics)
    paths = made.figures.write(args.out or run_dir_of(args.run_dir) / "plots")
    out.out("\n".join(str(p) for p in paths), highlight=False)
    for note in made.figures.notes:
        err.print(f"note: {note}", highlight=False)
    return 0


def cmd_report(args, out: Console, err: Console) -> int:
    from ..report import write_report

    if _needs_matplotlib("report"):
        return 2
    dest = write_report(args.run_dir, args.out, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, seed=args.seed, dynamics_file=args.dynamics,
                        max_tokens=args.tokens)
    out.out(str(dest), highlight=False)
    return 0
