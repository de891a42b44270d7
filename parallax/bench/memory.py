"""``parallax bench memory``: training memory of one step at each K (DESIGN.md §2.5).

For each K the model runs one forward and backward with ``k_max = K`` and halting fixed at K (so
every position really takes K steps). Reported per K:
- ``saved_bytes``: bytes of the distinct tensors autograd saves for backward (counted with
  ``torch.autograd.graph.saved_tensors_hooks``); the training contract says this is flat in K;
- ``peak_bytes``: CUDA peak allocated memory for the step, where a CUDA device is used (null on CPU);
- ``seconds``: wall time of the step (noise on a shared machine; shown for the ratio only).

One untimed step runs first, so that one-off allocations (library workspaces, kernel compilation)
are not charged to the first K.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from rich.table import Table

from ..build import autocast_dtype, resolve_device
from ..errors import ConfigError
from . import build_k_loop_model


@contextmanager
def saved_for_backward():
    """Within the block, collect the distinct tensors autograd saves for backward; yields a dict
    whose values are their sizes in bytes (a tensor saved twice is counted once)."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        seen.setdefault(key, t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


def measure(recipe, ks: list[int]) -> list[dict]:
    _, device, data, model = build_k_loop_model(recipe, "memory")
    amp = autocast_dtype(recipe.train, device)
    batch = data.batch(1)
    inputs, targets = batch["inputs"].to(device), batch["targets"].to(device)
    rows = []
    for i, k in enumerate([ks[0], *ks]):  # the first is the warm-up
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        with saved_for_backward() as seen:
            with torch.autocast(device.type, dtype=amp) if amp else torch.autocast(device.type, enabled=False):
                with model.fixed_k(k):  # every position really takes K steps
                    out = model(inputs, k_max=k)
                loss = F.cross_entropy(out.logits.float().flatten(0, -2), targets.flatten(), ignore_index=-100)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else None
        if i == 0:
            continue
        rows.append({"k": k, "k_realised": float(out.k.float().mean()), "saved_bytes": sum(seen.values()),
                     "peak_bytes": peak, "seconds": round(seconds, 4)})
    for r in rows:
        r["saved_ratio_vs_first"] = round(r["saved_bytes"] / rows[0]["saved_bytes"], 4)
        if r["peak_bytes"] is not None:
            r["peak_ratio_vs_first"] = round(r["peak_bytes"] / rows[0]["peak_bytes"], 4)
    return rows


def run(args, out, err) -> int:
    from ..runs import load

    recipe = load(args.recipe, args.overrides)
    live = getattr(recipe.model, "live_steps", 1)
    bad = [k for k in args.k if k < live]
    if bad:
        raise ConfigError(f"--k: every K must be >= model.live_steps ({live}); got {bad[0]}")
    rows = measure(recipe, args.k)
    device = str(resolve_device(recipe.train))
    if args.json:
        out.out(json.dumps({"device": device, "recipe": args.recipe, "rows": rows}, indent=2), highlight=False)
        return 0
    table = Table("K", "saved for backward", "ratio", "peak (CUDA)", "step s", title=f"training memory vs K ({device})")
    for r in rows:
        peak = f"{r['peak_bytes'] / 2**20:.1f} MiB" if r["peak_bytes"] is not None else "n/a on CPU"
        table.add_row(str(r["k"]), f"{r['saved_bytes'] / 2**20:.2f} MiB", f"{r['saved_ratio_vs_first']:.3f}", peak,
                      f"{r['seconds']:.3f}")
    out.print(table)
    return 0
