"""Time the attention probe's two layouts for a packed list of N queries, on one CPU thread.

    OMP_NUM_THREADS=1 python docs/measurements/cpu/k_loop_overhead/packed_attention.py > packed_attention.json

B 32 rows of 72 keys (the multihop recipe's batch), 4 heads of 16, 2 slot queries per head; the N
queries are drawn uniformly from the batch's positions. ``rows`` lays the queries out per row
(``_attend_rows``, which the probe uses for lists longer than the batch), ``gathered`` copies each
query's own row (``_attend_gathered``, for N <= B). Median of 31 calls after one untimed call, µs.
"""
import json
import statistics
import time

import torch

from parallax_plugins.experts.attention_probe import _attend_gathered, _attend_rows

torch.set_num_threads(1)
torch.manual_seed(0)
B, Hp, S, dh, Tk = 32, 4, 2, 16, 72
k, v = torch.randn(B, Hp, Tk, dh), torch.randn(B, Hp, Tk, dh)


def timed(f, *args) -> float:
    f(*args)
    ts = []
    for _ in range(31):
        t0 = time.perf_counter()
        f(*args)
        ts.append(time.perf_counter() - t0)
    return round(statistics.median(ts) * 1e6, 1)


out = []
for n in (8, 16, 32, 64, 128, 512, 2048):
    idx = torch.randperm(B * Tk)[:n].sort().values  # ascending: grouped by row, as the K loop packs
    rows, pos = idx // Tk, idx % Tk
    q = torch.randn(Hp * S, n, dh)
    diff = (_attend_rows(q, k, v, pos, rows) - _attend_gathered(q, k, v, pos, rows)).abs().max()
    out.append({"n": n, "rows_us": timed(_attend_rows, q, k, v, pos, rows),
                "gathered_us": timed(_attend_gathered, q, k, v, pos, rows), "max_abs_difference": float(diff)})
print(json.dumps({"B": B, "keys": Tk, "heads": Hp, "slots": S, "dh": dh, "threads": 1, "lists": out}, indent=1))
