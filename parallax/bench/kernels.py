"""``parallax bench kernels``: the workspace step, fused against its reference and ``torch.compile``.

For each shape (the shipped recipes' workspace shapes) and each implementation, forward and
forward+backward are timed (median of repeats). Each row also reports the achieved bandwidth:
the bytes the step must move (its inputs read once, its outputs written once) over the time, and
the floor: those bytes over the device's measured copy bandwidth, the time no implementation can
beat. The backward is taken with ``torch.autograd.grad``, so no gradient accumulation is timed.

On CUDA each call is timed twice: replayed from a CUDA graph (``graph``: the device time, with
the host's launch overhead removed; the floor ratio uses it) and launched as training launches it
(``launch``: CUDA events around each call, host overhead included). On a CPU the Triton kernel
runs only in Triton's interpreter, which says nothing about speed, so it is left out there and
the output says so.
"""
from __future__ import annotations

import json
import os
import statistics
import time

import torch
from rich.table import Table

from parallax_kernels.workspace import workspace_step_ref

# (name, B, T, H, S, dh): the shipped CWS recipes (d 64, 4 heads of 16, 8 slots, batch 32) at their
# sequence lengths: recall 32 tokens, tinystories 128, digits 4 patches; and a wider text workspace
# (d 256, 8 heads, batch 16 x 256 tokens). On CUDA also a batch large enough to fill the GPU.
SHAPES = [("recall", 32, 32, 4, 8, 16), ("tinystories", 32, 128, 4, 8, 16), ("digits", 32, 4, 4, 8, 16),
          ("text", 16, 256, 8, 8, 32)]
CUDA_SHAPES = [("large", 64, 512, 8, 8, 32)]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeats: int) -> float:
    fn()  # warm-up (compilation, autotuning)
    _sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def copy_bandwidth(device) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    x = torch.randn((256 if device.type == "cuda" else 64) * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    if device.type == "cuda":
        from triton.testing import do_bench

        seconds = do_bench(lambda: y.copy_(x), return_mode="median") * 1e-3
    else:
        seconds = _time(lambda: y.copy_(x), device, 10)
    return 2 * x.numel() * 4 / seconds


def _cuda_times(fn, repeats: int) -> tuple[float, float]:
    """(graph replay, launched) median seconds of one call."""
    from triton.testing import do_bench, do_bench_cudagraph

    launched = do_bench(fn, warmup=25, rep=max(repeats, 20) * 5, return_mode="median") * 1e-3
    graph = do_bench_cudagraph(fn, rep=max(repeats, 20) * 5, return_mode="median") * 1e-3
    return graph, launched


def step_bytes(B, T, H, S, dh, elt: int, backward: bool) -> int:
    n = B * T
    fwd = elt * n * H * (dh + 2 * S * dh + S) + elt * n * H * (dh + 2 * S)  # read q,k,v,cum; write out,cum,raw
    if not backward:
        return fwd
    # backward reads q,k,v,cum and the two upstream grads; writes the four input grads
    return fwd + elt * n * H * (dh + 2 * S * dh + S + dh + S) + elt * n * H * (dh + 2 * S * dh + S)


def measure(repeats: int = 20, dtype=torch.float32) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    impls = {"reference": workspace_step_ref, "compile(reference)": torch.compile(workspace_step_ref)}
    notes = []
    if device.type == "cuda":
        from parallax_kernels.workspace.fused import workspace_step_fused

        impls = {"fused": workspace_step_fused, **impls}
    else:
        notes.append("no CUDA device: the Triton kernel runs only in Triton's interpreter on CPU, "
                     "which measures nothing about its speed; fused is not timed")
    bw = copy_bandwidth(device)
    rows = []
    for name, B, T, H, S, dh in SHAPES + (CUDA_SHAPES if device.type == "cuda" else []):
        g = torch.Generator(device="cpu").manual_seed(0)
        mk = lambda *s: torch.randn(*s, generator=g).to(device, dtype).requires_grad_()  # noqa: E731
        q, k, v, cum = mk(B, T, H, dh), mk(B, T, S, H, dh), mk(B, T, S, H, dh), mk(B, T, H, S)
        decay = torch.full((H,), 0.9, device=device, requires_grad=True)
        go, gc = torch.randn_like(q), torch.randn_like(cum)
        for impl, fn in impls.items():
            def fwd():
                with torch.no_grad():
                    fn(q, k, v, cum, decay, 2.0)

            def fwd_bwd():
                out, c, _ = fn(q, k, v, cum, decay, 2.0)
                torch.autograd.grad((out, c), (q, k, v, cum, decay), (go, gc))

            for mode, call in (("forward", fwd), ("forward+backward", fwd_bwd)):
                launched = None
                if device.type == "cuda":
                    seconds, launched = _cuda_times(call, repeats)
                else:
                    seconds = _time(call, device, repeats)
                nbytes = step_bytes(B, T, H, S, dh, q.element_size(), mode != "forward")
                rows.append({"shape": name, "B": B, "T": T, "H": H, "S": S, "dh": dh, "impl": impl, "mode": mode,
                             "seconds": seconds, "launched_seconds": launched, "bytes": nbytes,
                             "achieved_GBps": nbytes / seconds / 1e9,
                             "floor_seconds": nbytes / bw, "x_floor": seconds / (nbytes / bw)})
    base = {(r["shape"], r["mode"]): r for r in rows if r["impl"] == "reference"}
    for r in rows:
        ref = base[(r["shape"], r["mode"])]
        r["speedup_vs_reference"] = ref["seconds"] / r["seconds"]
        if r["launched_seconds"] is not None:
            r["launched_speedup_vs_reference"] = ref["launched_seconds"] / r["launched_seconds"]
    if device.type == "cuda":
        notes.append("µs: replayed from a CUDA graph (device time); launched: CUDA events around each call as "
                     "training launches it, host overhead included")
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "dtype": str(dtype).replace("torch.", ""), "copy_bandwidth_GBps": bw / 1e9, "notes": notes, "rows": rows}


def run(args, out, err) -> int:
    result = measure(args.repeats)
    if args.json:
        out.out(json.dumps(result, indent=2), highlight=False)
        return 0
    cols = ["shape", "impl", "mode", "µs", "GB/s", "x floor", "vs reference"]
    launched = result["rows"][0]["launched_seconds"] is not None
    if launched:
        cols += ["launched µs", "launched vs reference"]
    table = Table(*cols,
                  title=f"workspace step on {result['device']} "
                        f"({result['dtype']}; copy {result['copy_bandwidth_GBps']:.1f} GB/s)")
    for r in result["rows"]:
        cells = [r["shape"], r["impl"], r["mode"], f"{r['seconds'] * 1e6:.1f}", f"{r['achieved_GBps']:.2f}",
                 f"{r['x_floor']:.1f}", f"{r['speedup_vs_reference']:.2f}x"]
        if launched:
            cells += [f"{r['launched_seconds'] * 1e6:.1f}", f"{r['launched_speedup_vs_reference']:.2f}x"]
        table.add_row(*cells)
    out.print(table)
    for note in result["notes"]:
        out.print(f"note: {note}")
    return 0
