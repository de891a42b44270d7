"""``parallax``: run, eval, generate, export, ls, cp, cat, validate, plugins (alias list-plugins), new-plugin,
bench, convert-checkpoint, plot, report.

User errors (``ParallaxError``) print one line and exit 2; argparse errors do the same and say
what to use instead. Recipe overrides are positional ``key=value`` and ``~key`` items.
"""
from __future__ import annotations

import argparse
import difflib
import errno
import math
import os
import signal
import sys
import threading

from rich.console import Console

from ..errors import ParallaxError
from ..schema import MAX_K, MAX_THREADS

COMMANDS = ["run", "eval", "generate", "export", "ls", "cp", "cat", "validate", "plugins", "list-plugins", "new-plugin",
            "bench", "convert-checkpoint", "plot", "report"]

#: words users type for a command, from other tools' vocabularies
ALIASES = {"train": "run", "fit": "run", "evaluate": "eval", "test": "eval", "sample": "generate",
           "list": "ls", "copy": "cp", "show": "cat", "check": "validate"}


class Parser(argparse.ArgumentParser):
    """argparse that fails in one line, with a hint for the common mistakes."""

    def error(self, message: str) -> None:  # type: ignore[override]
        hint = ""
        if "unrecognized arguments" in message or "unrecognized argument" in message:
            bad = message.split(":", 1)[1].split()
            flag = next((b for b in bad if b.startswith("-")), bad[0] if bad else "")
            key = _recipe_key(flag)
            if key:
                hint = f"; recipe options are overrides without dashes: {key}=VALUE"
            elif "=" in flag or flag.startswith("~"):
                hint = "; put key=value overrides before the --options"
            elif flag.startswith("-"):
                hint = f"; recipe options are overrides such as train.max_steps=100 (see `{self.prog} --help`)"
        elif "the following arguments are required" in message:
            message = message.replace(", overrides", "")  # overrides (nargs="*") are optional
        elif "invalid choice" in message and "argument command" in message:
            word = message.split("'")[1] if "'" in message else ""
            close = [ALIASES[word]] if word in ALIASES else difflib.get_close_matches(word, COMMANDS, n=1)
            hint = f"; did you mean `parallax {close[0]}`?" if close else f"; commands: {', '.join(COMMANDS)}"
            message = f"unknown command '{word}'"
        sys.stderr.write(f"{self.prog}: error: {message}{hint}\n")
        sys.exit(2)


def _recipe_key(flag: str) -> str | None:
    """The recipe key a mistyped flag such as ``--max-steps`` probably meant (``train.max_steps``)."""
    if not flag.startswith("-"):
        return None
    from ..schema import Recipe, TrainConfig

    leaf = flag.lstrip("-").split("=", 1)[0].replace("-", "_")
    keys = {k: k for k in Recipe.model_fields} | {k: f"train.{k}" for k in TrainConfig.model_fields}
    return keys.get(leaf)


def _count(text: str, most: int = 10**6) -> int:
    """An argparse type: a whole number of at least 1 and at most ``most`` (a count that could never end is refused)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    if n > most:
        raise argparse.ArgumentTypeError(f"must be at most {most:,}, got {n:,}")
    return n


def _k(text: str) -> int:
    """A K budget: at most MAX_K steps per position, as recipes allow."""
    return _count(text, MAX_K)


def _repeats(text: str) -> int:
    return _count(text, 10_000)


def _threads(text: str) -> int:
    n = _count(text)
    if n > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"at most {MAX_THREADS}, got {n} (this machine has {os.cpu_count()} CPUs)")
    return n


def _finite(low: float, inclusive: bool = True):
    """An argparse type: a finite float >= low (or > low)."""
    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if not math.isfinite(x) or x < low or (x == low and not inclusive):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>=' if inclusive else '>'} {low:g}, got {text}")
        return x
    return parse


def build_parser() -> Parser:
    p = Parser(prog="parallax", description="Parallax: the Central Workspace research framework.")
    p.add_argument("--version", action="version", version=f"parallax-cws {_version()}")
    sub = p.add_subparsers(dest="command", metavar="command", parser_class=Parser)
    sub.required = True

    r = sub.add_parser("run", help="train a recipe: parallax run RECIPE [key=value ...] [~key ...]")
    r.add_argument("recipe", help="a YAML file, or the name of a built-in recipe (see `parallax ls`)")
    r.add_argument("overrides", nargs="*", help="key=value sets a key (value parsed as YAML); ~key removes it")

    e = sub.add_parser("eval", help="evaluate a trained run: loss, perplexity or accuracy, K histogram, "
                                    "K per surprisal quantile")
    e.add_argument("run_dir", help="a run's out_dir (its newest checkpoint) or one step-XXXXXXXX/ folder")
    e.add_argument("overrides", nargs="*", help="key=value changes to the run's recipe (e.g. data.val_sequences=16)")
    e.add_argument("--data", nargs="+", metavar="PATH", help="evaluate on these local files (sets data.files)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="where to evaluate (default cpu)")

    g = sub.add_parser("generate", help="continue a prompt with a trained text run, one cached token step at a time")
    g.add_argument("run_dir", help="a run's out_dir (its newest checkpoint) or one step-XXXXXXXX/ folder")
    g.add_argument("--prompt", required=True, help="the text to continue")
    g.add_argument("--max-new-tokens", type=lambda t: _count(t, 10**12), default=100,
                   help="tokens to generate (default 100); they stream as produced, and Ctrl-C keeps them")
    g.add_argument("--temperature", type=_finite(0.0), default=0.8,
                   help="sampling temperature; 0 is greedy (default 0.8)")
    g.add_argument("--top-k", type=_count, default=None, help="sample among the k most likely tokens")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--show-k", action="store_true",
                   help="show the K each generated token used: its colour on a terminal, else [K] after it")
    g.add_argument("--json", action="store_true",
                   help="print one JSON object: the text, and each generated token with its id, K and log-probability")
    g.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="where to generate (default cpu)")
    g.add_argument("--compile", action="store_true",
                   help="compile the model's K steps first (train.compile=true; the first tokens wait for it)")
    g.add_argument("--threads", type=_threads, default=1,
                   help="torch CPU threads (default 1: one token's small ops run fastest on one)")

    x = sub.add_parser("export", help="write a run as a folder: config.json, model.safetensors, tokenizer, README.md")
    x.add_argument("run_dir", help="a run's out_dir (its newest checkpoint) or one step-XXXXXXXX/ folder")
    x.add_argument("--to", required=True, metavar="DIR", help="the folder to write (must be new or empty)")
    x.add_argument("--force", action="store_true", help="replace DIR if it holds files")
    x.add_argument("--push", metavar="REPO", default=None,
                   help="also upload DIR to this Hugging Face hub repository "
                        "(needs huggingface_hub, a token and the network)")

    sub.add_parser("ls", help="list the built-in recipes")

    c = sub.add_parser("cp", help="copy a built-in recipe to edit: parallax cp NAME DEST")
    c.add_argument("name")
    c.add_argument("dest")
    c.add_argument("--force", action="store_true", help="overwrite DEST if it exists")

    for name, text in (("cat", "print the resolved recipe, defaults included"),
                       ("validate", "validate a recipe and its overrides")):
        s = sub.add_parser(name, help=text)
        s.add_argument("recipe")
        s.add_argument("overrides", nargs="*")
        if name == "cat":
            s.add_argument("--doc", action="store_true",
                           help="every key with its type, value, default, allowed values and description")

    for name in ("plugins", "list-plugins"):
        s = sub.add_parser(name, help="list installed plugins and what they provide")
        s.add_argument("--json", action="store_true", help="one JSON array of plugin objects")

    n = sub.add_parser("new-plugin", help="write a plugin package that installs, passes its tests and trains as it is")
    n.add_argument("name", help="the plugin's name: its entry point and the recipe type it registers (e.g. my_expert)")
    n.add_argument("--kind", choices=["expert", "encoder", "decoder", "workspace"], default="expert",
                   help="what the plugin provides (default: expert)")
    n.add_argument("--dest", help="directory to create (default: ./NAME); must not exist or be empty")

    cc = sub.add_parser("convert-checkpoint", help="rewrite an older checkpoint's pickled trainer_state.pt as "
                                                   "safetensors + JSON (a run directory: each of its checkpoints)")
    cc.add_argument("path", help="a step-XXXXXXXX/ folder or a run's out_dir")
    cc.add_argument("--trust-pickle", action="store_true",
                    help="state that the file comes from a trusted source (it is still read without running code)")

    b = sub.add_parser("bench", help="benchmarks that print tables or JSON")
    bsub = b.add_subparsers(dest="bench", metavar="benchmark", parser_class=Parser)
    bsub.required = True
    m = bsub.add_parser("memory", help="saved-for-backward bytes and peak memory of one training step at each K")
    m.add_argument("recipe")
    m.add_argument("overrides", nargs="*")
    m.add_argument("--k", type=_k, nargs="+", default=[8, 16, 32, 48], help="K values (default 8 16 32 48)")
    m.add_argument("--json", action="store_true")
    kb = bsub.add_parser("kernels",
                         help="the workspace step: fused vs reference vs torch.compile, with the bandwidth floor")
    kb.add_argument("--repeats", type=_repeats, default=20)
    kb.add_argument("--json", action="store_true")
    hb = bsub.add_parser("halting", help="wall time per token: adaptive halting vs fixed K = round(m) vs fixed k_max")
    hb.add_argument("recipe", help="a recipe (its out_dir's newest checkpoint is timed), or a run directory or "
                    "step-XXXXXXXX/ folder (its own recipe and weights)")
    hb.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.compile=true to time the compiled "
                    "K loop (its compile left out)")
    hb.add_argument("--checkpoint", default=None, help="a step-XXXXXXXX directory (default: newest in out_dir)")
    hb.add_argument("--batches", type=_count, default=4, help="validation batches timed per setting")
    hb.add_argument("--batch-size", type=_count, default=None,
                    help="sequences per timed batch (default: the recipe's train.batch_size)")
    hb.add_argument("--mode", choices=["parallel", "incremental"], default="parallel",
                    help="settle whole batches at once, or feed sequences one token at a time (generation)")
    hb.add_argument("--sequences", type=_count, default=8, help="validation sequences fed one at a time (incremental)")
    hb.add_argument("--repeats", type=_repeats, default=5, help="interleaved repeats; the median is reported")
    hb.add_argument("--json", action="store_true")
    a = bsub.add_parser("ablation",
                        help="validation loss of a trained run with stored entries left out (e.g. a memory bank's)")
    a.add_argument("run_dir", help="a run's out_dir (its newest checkpoint) or one step-XXXXXXXX/ folder")
    a.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.9],
                   help="fractions of entries to leave out (default 0.25 0.5 0.9)")
    a.add_argument("--seeds", type=int, nargs="+", default=[0], help="which random subsets (default 0)")
    a.add_argument("--json", action="store_true")
    cb = bsub.add_parser("compare",
                         help="train recipes under one budget, side by side: params, tokens/s, validation, memory, K")
    cb.add_argument("items", nargs="+", metavar="RECIPE_OR_OVERRIDE",
                    help="recipe files or built-in names, then key=value / ~key overrides applied to every recipe")
    budget = cb.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_count, default=None, help="train each recipe for N optimizer steps")
    budget.add_argument("--minutes", type=_finite(0.0, inclusive=False), default=None,
                        help="train each recipe for M minutes of wall time")
    cb.add_argument("--match-params", nargs="?", const=None, default=False, metavar="TARGET",
                    help="scale each baseline's width to TARGET parameters: N, Nx (N times the first recipe's), "
                         "or (no value) the first recipe's count")
    cb.add_argument("--match-on", choices=["total", "non-embedding"], default="total",
                    help="which parameter count --match-params matches (default total)")
    cb.add_argument("--out", default=None,
                    help="keep the runs in this folder (default: a temporary folder, removed after)")
    cb.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="train every recipe on each of these seeds and report mean ± std per recipe")
    cb.add_argument("--compiled", action="store_true",
                    help="train every recipe eager and compiled (train.compile=false, then true), side by side, "
                         "with the compiled run's speedup and its compile time apart")
    cb.add_argument("--json", action="store_true")
    db = bsub.add_parser("dynamics",
                         help="how a trained CWS's state moves per K step: monotone contraction or oscillation")
    db.add_argument("run_dir", help="a trained CWS run's out_dir or step-XXXXXXXX/ folder")
    db.add_argument("--k", type=_k, default=None, help="steps to follow (default: the run's k_max)")
    db.add_argument("--batches", type=_count, default=2, help="validation batches (default 2)")
    db.add_argument("--json", action="store_true")
    gb = bsub.add_parser("generate", help="seconds per token, cached incremental decoding vs recomputing the prefix")
    gb.add_argument("run_dir", help="a text run's out_dir or step-XXXXXXXX/ folder")
    gb.add_argument("--context", type=_count, default=256, help="prefix length before the timed tokens (default 256)")
    gb.add_argument("--tokens", type=_count, default=16, help="tokens timed on each path (default 16)")
    gb.add_argument("--seed", type=int, default=0)
    gb.add_argument("--threads", type=_threads, default=1, help="torch CPU threads for both paths (default 1)")
    gb.add_argument("--compiled", action="store_true",
                    help="also time the cached path with the model compiled (train.compile=true), beside eager, "
                         "compile time apart")
    gb.add_argument("--json", action="store_true")
    _seed_benchmarks(bsub)

    pl = sub.add_parser("plot", help="PNG figures of a run: loss, accuracy and K against step and time, the K "
                                     "histogram, K by surprisal, settling (needs the plot extra)")
    pl.add_argument("run_dir", help="a run's out_dir (its newest checkpoint) or one step-XXXXXXXX/ folder")
    pl.add_argument("--out", default=None, help="folder for the PNG files (default: RUN/plots)")
    pl.add_argument("--dynamics", default=None, metavar="FILE.json",
                    help="a `parallax bench dynamics RUN --json` result (default: measured on one validation batch)")
    rp = sub.add_parser("report", help="one self-contained HTML page: figures, K map, summary, recipe")
    rp.add_argument("run_dir", help="a run's out_dir (its newest checkpoint) or one step-XXXXXXXX/ folder")
    rp.add_argument("--out", default=None, metavar="FILE.html", help="where to write it (default: RUN/report.html)")
    rp.add_argument("--prompt", default=None, help="map a prompt's generation instead of validation text (text runs)")
    rp.add_argument("--max-new-tokens", type=_count, default=60, help="tokens generated after --prompt (default 60)")
    rp.add_argument("--temperature", type=_finite(0.0), default=0.8, help="sampling temperature; 0 is greedy")
    rp.add_argument("--top-k", type=_count, default=None, help="sample among the k most likely tokens")
    rp.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    rp.add_argument("--tokens", type=_count, default=512, help="validation tokens on the K map (default 512)")
    rp.add_argument("--dynamics", default=None, metavar="FILE.json", help="a `parallax bench dynamics --json` result")
    return p


def _seed_benchmarks(bsub) -> None:
    """``bench seeds`` and ``bench sweep``: one recipe on several seeds, and a grid of its keys."""
    for name, text in (("seeds", "train one recipe on several seeds: each seed's final and best metric, mean ± std"),
                       ("sweep", "a grid over recipe keys (--set KEY=V1,V2), each point on every seed; "
                                 "the best on validation")):
        s = bsub.add_parser(name, help=text)
        s.add_argument("recipe")
        s.add_argument("overrides", nargs="*", help="key=value / ~key applied to every run")
        if name == "sweep":
            s.add_argument("--set", action="append", required=True, metavar="KEY=V1,V2,...",
                           help="a key and its values (repeatable)")
        s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2] if name == "sweep" else [0, 1, 2, 3, 4],
                       help="seeds (default " + ("0 1 2)" if name == "sweep" else "0 1 2 3 4)"))
        if name == "seeds":
            s.add_argument("--threshold", type=float, default=0.95,
                           help="report the share of seeds whose final metric reaches this (default 0.95)")
            s.add_argument("--at-step", type=_count, default=None, metavar="N",
                           help="also report each seed's metric at its last evaluation at or before step N, "
                                "a common point for runs that a wall-clock budget stops at different steps")
        s.add_argument("--jobs", type=_count, default=1,
                       help="runs at once (default 1); train.threads is split so that jobs * threads <= CPUs")
        budget = s.add_mutually_exclusive_group()
        budget.add_argument("--steps", type=_count, default=None, help="train each run for N optimizer steps")
        budget.add_argument("--minutes", type=_finite(0.0, inclusive=False), default=None,
                            help="train each run for M minutes")
        s.add_argument("--out", default=None,
                       help="keep the runs in this folder (default: a temporary folder, removed after)")
        s.add_argument("--json", action="store_true")


def _version() -> str:
    from .. import __version__

    return __version__


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (kill, timeout, a job scheduler) saves a run as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Console()
    err = Console(stderr=True, soft_wrap=True)  # log lines such as the run header stay one line each
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        from . import commands

        return commands.dispatch(args, out, err) or 0
    except ParallaxError as e:
        sys.stderr.write(f"parallax: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("parallax: interrupted\n")
        return 130
    except BrokenPipeError:  # the reader went away (`parallax plugins | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush is quiet
        return 0
    except OSError as e:  # a path that cannot be created, written or read: the user's to fix
        where = f"{e.filename}: " if e.filename else ""
        fix = "free space on that disk or choose another out_dir=..." if e.errno == errno.ENOSPC \
            else "check that the path exists and is writable"
        sys.stderr.write(f"parallax: error: {where}{e.strerror or e}; {fix}\n")
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
