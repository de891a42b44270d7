"""One recall training step at a fixed K, eager and compiled, with the reference workspace step in
its einsum form and in its broadcast-and-sum form, all four alternated in one process (one thread).

    OMP_NUM_THREADS=1 python docs/measurements/cpu/k_loop_overhead/train_step_pair.py 16 > train_step_pair.json

The recall recipe's model (untrained: a step's time does not depend on its weights), one training
batch of 32 x 32, forward at K (``fixed_k``), cross-entropy, backward and an AdamW step. 8 rounds,
the first 2 untimed (compilation); medians of the rest, in ms.
"""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from workspace_step import einsum_step  # the step's former form, beside this script

from parallax.bench import build_k_loop_model
from parallax.runs import load
from parallax_kernels.workspace import workspace_step_ref

torch.set_num_threads(1)
K = int(sys.argv[1]) if len(sys.argv) > 1 else 16

recipe = load("recipes/recall.yaml", [])
_, device, data, model = build_k_loop_model(recipe, "memory")
opt = torch.optim.AdamW(model.parameters(), 1e-3)
batch = data.batch(1)
x, y = batch["inputs"], batch["targets"]


def step():
    with model.fixed_k(K):
        out = model(x, k_max=K)
    loss = F.cross_entropy(out.logits.float().flatten(0, -2), y.flatten(), ignore_index=-100)
    loss.backward()
    opt.step()
    opt.zero_grad()


settings = {"eager einsum": (False, einsum_step), "eager reference": (False, workspace_step_ref),
            "compiled einsum": (True, einsum_step), "compiled reference": (True, workspace_step_ref)}
times = {name: [] for name in settings}
for r in range(8):
    for name, (compiled, ref) in settings.items():
        model.compiled_k_loop = compiled
        model.workspace.step_fn = lambda q, ref=ref: ref
        t0 = time.perf_counter()
        step()
        if r >= 2:
            times[name].append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"k": K, "threads": 1, "ms": {n: round(statistics.median(v), 1) for n, v in times.items()},
                  "ms_each": {n: [round(t, 1) for t in v] for n, v in times.items()}}, indent=1))
