"""Mean K per role of a recall position under a run's own halting rule (docs/results.md, section 7).

recall.yaml's sequences are ``k1 v1 ... k8 v8 | q1 a1 ... q8 a8`` (plugins/data/recall.py): a binding
key, a binding value, a query key (the scored "recall" token) and the answer token after it. The data
source reports "recall" against "other"; this splits "other" into its three roles, to see which of
them take more than the live step. It also reports the halting head's probability of stopping before
any frozen step (``k_min: 0``), per role, since that decision reads the observation alone.

    python k_by_role.py RUN [overrides...]   # prints one JSON object
"""
import json
import sys

import torch

from parallax import runs

ROLES = ("binding_key", "binding_value", "query_key", "answer")


def main(argv):
    torch.set_num_threads(1)
    run = runs.open_run(argv[0], argv[1:])
    model, cfg = run.model.eval(), run.recipe.data
    P, Q = cfg.n_pairs, cfg.n_queries
    T = 2 * (P + Q)
    role = torch.empty(T, dtype=torch.long)  # (T,) the role of each position, fixed by the layout
    role[0 : 2 * P : 2], role[1 : 2 * P : 2] = 0, 1
    role[2 * P :: 2], role[2 * P + 1 :: 2] = 2, 3
    k_sum, p_sum, n = torch.zeros(4), torch.zeros(4), torch.zeros(4)
    hist = torch.zeros(4, model.k_max + 1)
    halting = model.halting
    with torch.no_grad():
        for batch in run.data.val_batches(64):
            x = batch["inputs"]  # (B,T)
            out = model(x)
            k = out.k.float()  # (B,T)
            obs, _, _ = model._observe(x)  # (B,T,d): the initial state under init_h: obs
            h0 = model.workspace.init_state(obs, 1).h  # (B,T,d)
            p_stop = torch.sigmoid(halting.logit(h0, 0, h0 if halting.cfg.reads_start else None))  # (B,T)
            for r in range(4):
                m = (role == r).expand_as(k)  # (B,T)
                k_sum[r] += k[m].sum()
                p_sum[r] += p_stop[m].sum()
                n[r] += m.sum()
                hist[r] += torch.bincount(out.k[m], minlength=model.k_max + 1)[: model.k_max + 1].float()
    bar = halting.cfg.eval_threshold or halting.cfg.threshold
    print(json.dumps({
        "run": argv[0], "threshold": bar,
        "roles": {name: {"k_mean": round(float(k_sum[r] / n[r]), 4), "n": int(n[r]),
                         "p_stop_before_any_step": round(float(p_sum[r] / n[r]), 4),
                         "k_histogram": {str(j): int(c) for j, c in enumerate(hist[r].tolist()) if c}}
                  for r, name in enumerate(ROLES)}}))


if __name__ == "__main__":
    main(sys.argv[1:])
