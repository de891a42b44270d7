"""The halting-error diagnostic of docs/results.md, section 7: where a multihop run's errors come from.

For each hop count h it reports, on the fixed validation set:
- ``own``: accuracy under the run's own halting rule, and the histogram of the K its queries took,
  with the accuracy at each K (``{K: [n, accuracy %]}``): a query that halts at K = h and is wrong
  is a step error, one that halts elsewhere a halting error;
- ``forced_K{K}``: accuracy when every position takes exactly K steps (the run reopened with
  ``model.k_max=K model.halting.k_min=K``, as ``parallax eval`` takes them): the step's answer after K
  steps, whatever the rule would have done.

Not part of the library: it reads the multihop data source's kinds (hop1, hop2, ...).

    python halting_errors.py RUN [overrides...]    # e.g. model.halting.threshold=0.5
"""
import json
import sys

import torch

from parallax import runs
from parallax.evaluate import evaluate


def main(argv):
    torch.set_num_threads(1)
    run = runs.open_run(argv[0], argv[1:])
    model, hops = run.model.eval(), range(1, run.recipe.data.h_max + 1)
    out = {}
    with torch.no_grad():
        ks, right, kinds = [], [], []
        for b in run.data.val_batches():
            o = model(b["inputs"])
            scored = b["targets"] != -100  # (B,T)
            ks.append(o.k[scored])
            right.append((o.logits.argmax(-1) == b["targets"])[scored])
            kinds.append(b["kind"][scored])
        ks, right, kinds = torch.cat(ks), torch.cat(right), torch.cat(kinds)  # (N,) each
        for h in hops:
            sel = kinds == h
            hist = {int(k): [int((sel & (ks == k)).sum()), round(100 * right[sel & (ks == k)].float().mean().item(), 1)]
                    for k in ks[sel].unique()}
            out[f"hop{h}"] = {"accuracy": round(100 * right[sel].float().mean().item(), 1),
                              "k_mean": round(ks[sel].float().mean().item(), 2), "k_hist": hist}
    for K in range(1, 2 * len(hops) + 1):  # k_min K under a budget of K: exactly K steps everywhere
        forced = runs.open_run(argv[0], [*argv[1:], f"model.k_max={K}", f"model.halting.k_min={K}"])
        by_kind = evaluate(forced.model, forced.data, torch.device("cpu"), None, detailed=True)["by_kind"]
        out[f"forced_K{K}"] = {f"hop{h}": round(100 * by_kind[f"hop{h}"]["accuracy"], 1) for h in hops}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
