"""``parallax bench halting``: does halting save wall time? Three settings of one trained model.

(a) the recipe's halting rule, realised mean K = m;  (b) a fixed K = round(m);  (c) a fixed K = k_max.
Each is timed on the same validation batches (forward, no grad), the settings interleaved so that
load on the machine hits all three alike, and their order rotated each repeat so that none always
runs first; the median of the repeats is reported as seconds per token. If halting really skips
work, (a) costs about what (b) costs, and (c) costs about k_max/m times (a).

Each row also times the K loop alone (``k_loop_seconds_per_token``: the encoder, the experts' contexts
and the decoder left out, through ``Model.k_loop``); where halted positions cost nothing, (a)'s K-loop
time over (c)'s comes to m / k_max (``k_loop_a_over_c_per_m_over_k_max`` near 1).

Each row also counts the K iterations each K loop ran (a batch runs until its slowest position
halts). Where an iteration costs the same however few positions are still active (a small model
on a GPU, bound by latency), time follows iterations, not position-steps, and (a)/(b) comes to
``a_over_b_lockstep`` = iterations (a) / iterations (b). ``a_at_k_max`` and
``position_steps_row_bound`` say how much (a) could save at best.

``train.compile=true`` (an override) times the compiled K loop instead, its compile left out of the
timings (``warm_up_seconds``). Its frozen steps run on the full block with halted positions masked
and ask the host every few steps whether any position still settles, so position-steps count the
block, not the positions, and time follows the slowest position of each batch.

Two ways to run the model: ``parallel`` (the default) settles whole validation batches at once, as
training and evaluation do, so a K step runs while any position of the batch is settling;
``incremental`` feeds ``sequences`` validation sequences one token at a time, alone, through the
generation caches, so each K loop settles one position and stops when that position halts.
"""
from __future__ import annotations

import json
import statistics
import time
from contextlib import nullcontext

import torch
from rich.table import Table

from .. import checkpoint as ckpt
from ..compiling import compile_for_inference, wanted
from ..generate import IncrementalState
from . import build_k_loop_model


def measure(recipe, checkpoint: str | None = None, batches: int = 4, repeats: int = 5,
            batch_size: int | None = None, mode: str = "parallel", sequences: int = 8) -> dict:
    _, device, data, model = build_k_loop_model(recipe, "halting")
    model.eval()
    path = checkpoint or ckpt.latest(recipe.out_dir)
    if path is not None:
        ckpt.load_model_state(path, model)
    # ``train.compile=true`` times the compiled K loop (``auto`` stays eager here, as for evaluation): its
    # frozen steps run on the full block with halted positions masked, so the rule saves iterations only
    # once a whole block has halted, and its position-steps count the block (docs/benchmarks.md)
    compiled = wanted(recipe.train.compile, model, device)
    if compiled:
        compile_for_inference(model)
    if mode == "incremental":
        val = next(iter(data.val_batches(sequences)))["inputs"]  # (N,T)
        inputs = [row[None].to(device) for row in val]  # N sequences of (1,T)
    else:
        inputs = [b["inputs"].to(device) for _, b in zip(range(batches), data.val_batches(batch_size))]
    tokens = sum(x.numel() for x in inputs)
    k_max = model.k_max

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, int, list[int]]:
        """Each position's K, the position-steps computed and each K loop's iterations, for one batch."""
        if mode == "parallel":
            out = model(x)
            return out.k, out.stats["work"], [int(out.k.max())]  # (B,T)
        state, ks = IncrementalState(model), []
        for t in range(x.shape[1]):
            _, k_t = state.feed(x[:, t : t + 1])  # one position: its K loop stops when it halts
            ks.append(int(k_t))
        return torch.tensor(ks), sum(ks), ks

    def run(fixed: bool, k: int) -> tuple[float, float, int, float, list[torch.Tensor]]:
        """Seconds, mean K (of the batch means), position-steps, iterations per K loop, each batch's K."""
        t0 = time.perf_counter()
        k_maps, work, loops = [], 0, []
        with torch.no_grad(), model.fixed_k(k) if fixed else nullcontext():
            for x in inputs:
                k_map, w, its = forward(x)
                k_maps.append(k_map)
                work += w
                loops += its
        if device.type == "cuda":
            torch.cuda.synchronize()
        k_mean = sum(km.float().mean().item() for km in k_maps) / len(k_maps)
        return time.perf_counter() - t0, k_mean, work, sum(loops) / len(loops), k_maps

    t0 = time.perf_counter()
    run(False, k_max)  # warm-up, and the compile where compiled: its time is reported apart
    if compiled:  # the fixed settings' graphs too (a K budget of live steps alone has no frozen step)
        run(True, k_max)
        run(True, max(model.live_steps, round(model.k_max / 2)))
    warm_up_seconds = time.perf_counter() - t0
    _, m, _, _, k_maps = run(False, k_max)
    limits = _adaptive_limits(k_maps, model.live_steps, k_max) if mode == "parallel" else None
    settings = {"a_adaptive": (False, k_max), "b_fixed_round_m": (True, max(model.live_steps, round(m))),
                "c_fixed_k_max": (True, k_max)}
    times: dict[str, list[float]] = {name: [] for name in settings}
    loop_times: dict[str, list[float]] = {name: [] for name in settings}
    info: dict[str, tuple[float, int, float, int]] = {}
    names = list(settings)
    # the K loop alone: the encoder and the experts' contexts are computed once, outside the clock
    with torch.no_grad():
        loops = [model.k_loop(x) for x in inputs] if mode == "parallel" else []

    def k_loop_seconds(fixed: bool, k: int) -> float:
        with torch.no_grad(), model.fixed_k(k) if fixed else nullcontext():
            t0 = time.perf_counter()
            for settle_batch in loops:
                settle_batch()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

    if compiled and loops:  # the K loop alone, once per setting: a graph it needs first is compiled here
        t0 = time.perf_counter()
        for fixed, k in settings.values():
            k_loop_seconds(fixed, k)
        warm_up_seconds += time.perf_counter() - t0
    for r in range(repeats):
        for name in names[r % 3:] + names[: r % 3]:
            fixed, k = settings[name]
            seconds, k_mean, work, iterations, k_maps_now = run(fixed, k)
            times[name].append(seconds)
            info[name] = (k_mean, work, iterations, sum(int(km.sum()) for km in k_maps_now))
            if loops:
                loop_times[name].append(k_loop_seconds(fixed, k))
    rows = []
    for name, (_, k) in settings.items():
        k_mean, work, iterations, k_sum = info[name]
        # position_steps is what the K loop computed, counted block by block; k_sum is the steps the
        # positions took (their frozen steps plus the live ones): equal where halted positions cost nothing
        rows.append({"setting": name, "k_budget": k, "k_mean": round(k_mean, 3),
                     "position_steps": work, "k_sum": k_sum,
                     "position_steps_per_token": round(work / tokens, 3),
                     "iterations_per_k_loop": round(iterations, 3),
                     "seconds_per_token": statistics.median(times[name]) / tokens,
                     "k_loop_seconds_per_token": statistics.median(loop_times[name]) / tokens if loops else None})
    a, b, c = (r["seconds_per_token"] for r in rows)
    follows = {}
    if loops:  # does the K loop's time follow the mean K? (a) against (c), beside m / k_max
        ka, kc = rows[0]["k_loop_seconds_per_token"], rows[2]["k_loop_seconds_per_token"]
        follows = {"k_loop_a_over_c": round(ka / kc, 3), "m_over_k_max": round(m / k_max, 3),
                   "k_loop_a_over_c_per_m_over_k_max": round((ka / kc) / (m / k_max), 3)}
    return {
        "device": str(device), "checkpoint": str(path) if path else None, "mode": mode, "tokens": tokens,
        "compiled": compiled, "warm_up_seconds": round(warm_up_seconds, 1),
        "batch_shape": list(inputs[0].shape),
        "repeats": repeats,
        "k_max": model.k_max, "m": round(m, 3), "rows": rows,
        "a_over_b": round(a / b, 3), "c_over_a": round(c / a, 3),
        "a_over_b_lockstep": round(rows[0]["iterations_per_k_loop"] / rows[1]["iterations_per_k_loop"], 3),
        "c_over_a_floor": round(model.k_max / m * 0.7, 3),
        **follows,
        **(limits or {}),
    }


def _adaptive_limits(k_maps: list[torch.Tensor], live_steps: int, k_max: int) -> dict:
    """What bounds the saving of (a) in parallel settling, from each position's K under the adaptive rule.

    ``a_at_k_max``: the share of positions that run to k_max. ``position_steps_row_bound``: the
    position-steps per token if every row were gathered to its own active positions at every step,
    the least a per-row ``(B,T')`` working set could compute (the packed K loop computes the mean K).
    """
    at_k_max = bound = total = 0
    for k in k_maps:  # (B,T)
        frozen = k - live_steps
        for i in range(int(frozen.max())):
            bound += k.shape[0] * int((frozen > i).sum(1).max())
        bound += live_steps * k.numel()
        at_k_max += int((k == k_max).sum())
        total += k.numel()
    return {"a_at_k_max": round(at_k_max / total, 3), "position_steps_row_bound": round(bound / total, 3)}


def run(args, out, err) -> int:
    from pathlib import Path

    from ..runs import find_checkpoint, load

    checkpoint = args.checkpoint
    if Path(args.recipe).is_dir():  # a run directory or one of its step folders: its own recipe and weights
        checkpoint = checkpoint or str(find_checkpoint(args.recipe))
        recipe = load(str(Path(checkpoint) / "config.yaml"), args.overrides)
    else:
        recipe = load(args.recipe, args.overrides)
    result = measure(recipe, checkpoint, args.batches, args.repeats, args.batch_size, args.mode,
                     args.sequences)
    if result["checkpoint"] is None:
        err.print("note: no checkpoint in the recipe's out_dir; timing an untrained model")
    if args.json:
        out.out(json.dumps(result, indent=2), highlight=False)
        return 0
    how = f", compiled (warm-up and compile {result['warm_up_seconds']} s)" if result["compiled"] else ""
    table = Table("setting", "K budget", "mean K", "position-steps/token", "iterations/K loop", "µs/token",
                  "K loop µs/token",
                  title=f"halting on {result['device']}, {result['mode']}{how} "
                        f"(m = {result['m']}, k_max = {result['k_max']})")
    for r in result["rows"]:
        loop = r["k_loop_seconds_per_token"]
        table.add_row(r["setting"], str(r["k_budget"]), f"{r['k_mean']:.2f}", f"{r['position_steps_per_token']:.2f}",
                      f"{r['iterations_per_k_loop']:.2f}", f"{r['seconds_per_token'] * 1e6:.1f}",
                      f"{loop * 1e6:.1f}" if loop is not None else "-")
    out.print(table)
    if "k_loop_a_over_c" in result:
        out.print(f"K loop alone: (a)/(c) = {result['k_loop_a_over_c']} for m/k_max = {result['m_over_k_max']} "
                  f"(ratio {result['k_loop_a_over_c_per_m_over_k_max']}; 1.0 when time follows the mean K)")
    out.print(f"(a)/(b) = {result['a_over_b']}   (c)/(a) = {result['c_over_a']} "
              f"(k_max/m x 0.7 = {result['c_over_a_floor']})")
    out.print(f"iterations (a)/(b) = {result['a_over_b_lockstep']}: (a)/(b) where a K iteration costs the same "
              f"however few positions are active")
    if "a_at_k_max" in result:
        out.print(f"under (a), {result['a_at_k_max']:.1%} of positions run to k_max; gathering each row at every "
                  f"step would compute {result['position_steps_row_bound']} position-steps per token")
    return 0
