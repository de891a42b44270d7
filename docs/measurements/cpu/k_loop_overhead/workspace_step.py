"""Time the reference workspace step against its former einsum form, at recall's shape, one CPU thread.

    OMP_NUM_THREADS=1 python docs/measurements/cpu/k_loop_overhead/workspace_step.py > workspace_step.json

Shape (B,T,S,H,dh) = (32,32,8,4,16). ``einsum`` is the step as it was written before (two einsums,
which lay k and v out again for a batched (1 x dh)(dh x S) matmul per position and head);
``reference`` is ``parallax_kernels.workspace.workspace_step_ref`` (broadcast and sum). The two
alternate, 7 rounds of 20 calls each; medians in ms, forward under no_grad and forward+backward.
"""
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from parallax_kernels.workspace import workspace_step_ref

B, T, S, H, dh = 32, 32, 8, 4, 16


def einsum_step(q, k, v, cum, decay, base, active=None):
    """The reference step as it was written before: two einsums (``train_step_pair.py`` uses it too)."""
    old = cum
    raw = torch.einsum("bthd,btshd->bths", q, k) / math.sqrt(q.shape[-1])  # (B,T,H,S)
    decay = decay.to(raw.dtype)[:, None]
    cum = decay * cum + (1.0 - decay) + raw
    out = torch.einsum("bths,btshd->bthd", torch.log1p(F.silu(cum)) / math.log(base), v)  # (B,T,H,dh)
    if active is not None:
        a = active[..., None, None]
        out, raw, cum = out * a, raw * a, torch.where(a, cum, old)
    return out, cum, raw


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shapes = [(B, T, H, dh), (B, T, S, H, dh), (B, T, S, H, dh), (B, T, H, S)]
    args = [torch.randn(*s, requires_grad=True) for s in shapes]
    decay = torch.full((H,), 0.9)
    grads = [torch.randn(B, T, H, dh), torch.randn(B, T, H, S), torch.randn(B, T, H, S)]
    pairs = zip(einsum_step(*args, decay, 2.0), workspace_step_ref(*args, decay, 2.0))
    diff = max(float((a - b).detach().abs().max()) for a, b in pairs)
    times = {(name, mode): [] for name in ("einsum", "reference") for mode in ("forward", "forward+backward")}
    for _ in range(7):
        for name, f in (("einsum", einsum_step), ("reference", workspace_step_ref)):
            with torch.no_grad():
                t0 = time.perf_counter()
                for _ in range(20):
                    f(*args, decay, 2.0)
                times[(name, "forward")].append((time.perf_counter() - t0) / 20 * 1e3)
            t0 = time.perf_counter()
            for _ in range(20):
                torch.autograd.backward(f(*args, decay, 2.0), grads)
            times[(name, "forward+backward")].append((time.perf_counter() - t0) / 20 * 1e3)
    med = {f"{n} {m}": round(statistics.median(v), 3) for (n, m), v in times.items()}
    print(json.dumps({"shape": [B, T, S, H, dh], "threads": 1, "max_abs_difference": diff, "ms": med,
                      "einsum_over_reference": {m: round(med[f"einsum {m}"] / med[f"reference {m}"], 2)
                                                for m in ("forward", "forward+backward")}}, indent=1))


if __name__ == "__main__":
    main()
