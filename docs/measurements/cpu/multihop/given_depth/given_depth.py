"""The multihop diagnostic of docs/results.md, section 7: K given by the data, not by a halting rule.

Each hop-h query position runs exactly K = h steps (h - 1 frozen, then the live one) and every other
position K = 1, in training and in evaluation. It asks whether one hop per K step is learnable and
representable at all, apart from learning when to stop. Not part of the library: the rule reads the
hop token from the inputs, which only this data source's layout makes meaningful.

    python given_depth.py train OUT_DIR [recipe overrides...]   # recipes/multihop.yaml, given depth
    python given_depth.py eval RUN [overrides...]               # any multihop run, evaluated at given depth
"""
import json
import sys

import torch

import parallax
from parallax import runs
from parallax import trainer as trainer_module
from parallax.evaluate import evaluate


class GivenDepth(parallax.HaltingRule):
    """Halts a position once its frozen steps reach ``need - 1`` (``need (B,T)``: set before each forward)."""

    halts_before_steps = True

    def __init__(self):
        self.cfg, self.need = None, None

    def update(self, raw, prev_raw, memo, k, h=None):
        return self.need - 1 <= k  # (B,T)


def give_depth(model, n_nodes: int, max_hops: int):
    """Replace the model's halting rule by GivenDepth, fed from each batch's hop tokens."""
    rule = GivenDepth()
    if "halting" in model._modules:
        del model.halting
    model.halting = rule
    forward = model.forward

    def with_depth(inputs, *args, **kwargs):
        hop = inputs - n_nodes + 1  # hop token of h is n_nodes + h - 1 (plugins/data/multihop.py)
        rule.need = torch.where((hop >= 1) & (hop <= max_hops), hop, torch.ones_like(hop))  # (B,T)
        return forward(inputs, *args, **kwargs)

    model.forward = with_depth
    return model


def main(argv):
    mode, path, overrides = argv[0], argv[1], argv[2:]
    if mode == "train":
        recipe = runs.load("recipes/multihop.yaml", ["train.compile=false", "model.train_k=max", f"out_dir={path}",
                                                     "model.halting={type: fixed}", *overrides])
        build = trainer_module.build_model
        trainer_module.build_model = lambda cfg, info, reg=None: give_depth(
            build(cfg, info, reg), recipe.data.n_nodes, recipe.data.max_hops)
        print(json.dumps(trainer_module.Trainer(recipe).fit()))
    else:
        torch.set_num_threads(1)
        run = runs.open_run(path, overrides)
        model = give_depth(run.model, run.recipe.data.n_nodes, run.recipe.data.max_hops)
        result = evaluate(model, run.data, torch.device("cpu"), None)
        print(json.dumps({k: v for k, v in result.items() if "hop" in k or k in ("val_accuracy", "val_k_mean")}))


if __name__ == "__main__":
    main(sys.argv[1:])
