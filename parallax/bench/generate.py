"""``parallax bench generate``: seconds per generated token, cached incremental decoding against
recomputing the whole prefix, at a given context length (DESIGN.md §2.7).

Both paths start from the same prefix of ``context`` ids (drawn at random from the vocabulary, so
that the benchmark needs no data) and generate ``tokens`` ids greedily. The cached path has fed the
prefix through the caches first (not timed); the recompute path runs the full forward over the
growing prefix for every token. Reported: seconds per token on each path, their ratio, the mean K
per token on each, and whether the two greedy continuations agree.

``--compiled`` then compiles the model (``train.compile=true``: a CWS compiles its K steps), runs one
short generation to compile it (``compile_seconds``, not timed with the rest), and times the cached
path again: ``compiled_s_per_token`` and ``compiled_speedup`` (eager cached over compiled cached).
"""
from __future__ import annotations

import json
import time

import torch
from rich.table import Table

from ..errors import ConfigError
from ..generate import generate


def _prefix(vocab_size: int, context: int, seed: int) -> list[int]:
    """The benchmark's prefix: ``context`` ids drawn at random from the vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (context,), generator=gen).tolist()


def measure(model: torch.nn.Module, vocab_size: int, context: int, tokens: int, seed: int = 0) -> dict:
    prefix = _prefix(vocab_size, context, seed)
    cached = generate(model, prefix, tokens, temperature=0, cached=True)
    full = generate(model, prefix, tokens, temperature=0, cached=False)
    per_c, per_f = cached.seconds / len(cached.ids), full.seconds / len(full.ids)
    return {
        "context": context, "tokens": tokens, "threads": torch.get_num_threads(),
        "cached_s_per_token": per_c, "recompute_s_per_token": per_f, "speedup": per_f / per_c,
        "cached_k_mean": cached.k_mean, "recompute_k_mean": full.k_mean, "same_tokens": cached.ids == full.ids,
    }


def measure_compiled(model: torch.nn.Module, vocab_size: int, context: int, tokens: int, seed: int = 0) -> dict:
    """The cached path compiled, against the eager cached path of ``measure``; compiles ``model`` in place."""
    from ..compiling import compile_for_inference

    prefix = _prefix(vocab_size, context, seed)
    eager = generate(model, prefix, tokens, temperature=0, cached=True)
    compile_for_inference(model)
    t0 = time.perf_counter()
    generate(model, prefix, 2, temperature=0, cached=True)  # compiles the step graphs
    compile_s = time.perf_counter() - t0
    comp = generate(model, prefix, tokens, temperature=0, cached=True)
    per_e, per_c = eager.seconds / len(eager.ids), comp.seconds / len(comp.ids)
    return {"eager_cached_s_per_token": per_e, "compiled_s_per_token": per_c, "compiled_speedup": per_e / per_c,
            "compile_seconds": compile_s, "compiled_same_tokens": comp.ids == eager.ids}


def run(args, out, err) -> int:
    from ..runs import open_text_run

    if args.context < 1 or args.tokens < 1:
        raise ConfigError("--context and --tokens: must be at least 1")
    run_, tok = open_text_run(args.run_dir, args.threads)
    row = measure(run_.model, tok.vocab_size, args.context, args.tokens, args.seed)
    if getattr(args, "compiled", False):
        row.update(measure_compiled(run_.model, tok.vocab_size, args.context, args.tokens, args.seed))
    row["run"] = str(run_.checkpoint)
    if args.json:
        out.out(json.dumps(row, indent=2), highlight=False)
        return 0
    table = Table("path", "s / token", "mean K",
                  title=f"generation at a {args.context}-token context ({row['threads']} threads)")
    table.add_row("cached (incremental)", f"{row['cached_s_per_token']:.4f}", f"{row['cached_k_mean']:.2f}")
    table.add_row("recompute prefix", f"{row['recompute_s_per_token']:.4f}", f"{row['recompute_k_mean']:.2f}")
    if "compiled_s_per_token" in row:
        table.add_row("cached, eager (again)", f"{row['eager_cached_s_per_token']:.4f}", "")
        table.add_row("cached, compiled", f"{row['compiled_s_per_token']:.4f}", "")
    out.print(table)
    out.print(f"speedup {row['speedup']:.1f}x; same greedy tokens: {row['same_tokens']}")
    if "compiled_s_per_token" in row:
        out.print(f"compiled: {row['compiled_speedup']:.2f}x the eager cached path per token (side by side); "
                  f"compile {row['compile_seconds']:.1f} s apart; same greedy tokens: {row['compiled_same_tokens']}")
    return 0
