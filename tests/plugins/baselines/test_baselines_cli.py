"""Both baselines train through the CLI on the tiny recall recipe; bad head counts exit 2 with one line."""
from __future__ import annotations

import json

import pytest

from parallax.cli.main import main

TRANSFORMER = "model={type: transformer, n_layer: 1, n_head: 2, n_kv_heads: 1, n_embd: 16}"
DUALTRACK = "model={type: dualtrack, n_layer: 1, n_head: 2, n_kv_heads: 1, n_embd: 16, num_loops: 2}"


@pytest.mark.parametrize("model", [TRANSFORMER, DUALTRACK], ids=["transformer", "dualtrack"])
def test_trains_three_steps_through_the_cli(tiny_recipe, model):
    # ~model first: an override of a mapping merges into it, and the CWS keys must not survive
    rc = main(["run", str(tiny_recipe), "~model", model, "train.max_steps=3", "train.eval_every=3"])
    assert rc == 0
    run = tiny_recipe.parent / "run"
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert max(r.get("step", 0) for r in records) == 3
    assert losses and all(loss == loss and loss < 10 for loss in losses)  # finite and sane for 8 values


@pytest.mark.parametrize(
    "model, needles",
    [
        ("model={type: transformer, n_head: 4, n_kv_heads: 3, n_embd: 16}", ["n_head (4)", "n_kv_heads (3)"]),
        ("model={type: transformer, n_head: 3, n_kv_heads: 1, n_embd: 16}", ["n_embd (16)", "n_head (3)"]),
        ("model={type: dualtrack, n_head: 4, n_kv_heads: 3, n_embd: 16}", ["n_head (4)", "n_kv_heads (3)"]),
        ("model={type: dualtrack, n_head: 3, n_kv_heads: 1, n_embd: 16}", ["n_embd (16)", "n_head (3)"]),
    ],
)
def test_bad_head_counts_are_one_line_config_errors(tiny_recipe, capsys, model, needles):
    rc = main(["validate", str(tiny_recipe), "~model", model])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_image_data_is_a_one_line_error(tmp_path, capsys):
    rc = main(["validate", "digits", "~model", TRANSFORMER, f"out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "vocabulary" in err, err
