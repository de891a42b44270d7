"""``parallax bench dynamics``: step-to-step movement of the workspace state, and what it calls monotone or
oscillating."""
from __future__ import annotations

import json

import torch

from parallax.bench.dynamics import summarize
from parallax.cli.main import main
from parallax.runs import open_run
from parallax.testing import train


def path(steps: list[float], n: int = 3, d: int = 4) -> torch.Tensor:
    """h_0..h_K (K+1,N,d): every position moves by steps[k] along one fixed direction."""
    v = torch.ones(n, d)
    h = [torch.zeros(n, d)]
    for s in steps:
        h.append(h[-1] + s * v)
    return torch.stack(h)


def test_a_contracting_path_is_monotone_and_never_turns_back():
    r = summarize(path([1.0, 0.5, 0.25, 0.125]), torch.zeros(3, 3))
    assert r["monotone_share"] == 1.0 and r["rises_per_position"] == 0.0 and r["reversal_share"] == 0.0
    assert [row["move_mean"] for row in r["rows"]] == [1.0, 0.5, 0.25, 0.125]
    assert r["rows"][1]["ratio_median"] == 0.5
    assert r["final_over_peak"] == 0.125


def test_a_damped_oscillation_contracts_but_turns_back_every_step():
    r = summarize(path([1.0, -0.5, 0.25, -0.125]), torch.zeros(3, 3))
    assert r["monotone_share"] == 1.0  # the movement shrinks ...
    assert r["reversal_share"] == 1.0  # ... while the direction flips at every step: an overshoot each time


def test_a_growing_path_is_not_monotone():
    r = summarize(path([0.1, 0.2, 0.1, 0.4]), torch.zeros(3, 3))
    assert r["monotone_share"] == 0.0 and r["rises_per_position"] == 2.0
    assert r["final_over_peak"] == 1.0


def test_states_follow_the_k_loop_on_a_trained_run(tiny_recipe, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(tiny_recipe, run_dir, steps=2)
    run = open_run(run_dir)
    inputs = next(iter(run.data.val_batches()))["inputs"]
    h3, raw3 = run.model.trajectory(inputs, 3)
    h2, _ = run.model.trajectory(inputs, 2)
    B, T = inputs.shape
    assert h3.shape == (4, B, T, run.model.cfg.d_model) and raw3.shape == (2, B, T)
    torch.testing.assert_close(h3[:3], h2)  # the state after k steps does not depend on the budget
    torch.testing.assert_close(h3[0], run.model.encoder(inputs))  # init_h: obs starts from the observations
    assert not torch.allclose(h3[2], h3[3])

    assert main(["bench", "dynamics", str(run_dir), "--k", "3", "--batches", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["k"] == 3 and result["positions"] == B * T and len(result["rows"]) == 3
    move1 = (h3[1] - h3[0]).pow(2).mean(-1).sqrt().mean().item()
    assert abs(result["rows"][0]["move_mean"] - move1) < 1e-5
    assert result["rows"][2]["raw_move_mean"] == raw3[1].mean().item()
    assert 0 <= result["monotone_share"] <= 1 and 0 <= result["reversal_share"] <= 1


def test_a_model_without_a_k_loop_is_a_one_line_error(tiny_recipe, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(tiny_recipe, run_dir, "~model", "model={type: transformer, n_layer: 1, n_head: 2, n_kv_heads: 1, n_embd: 16}",
          steps=1)
    capsys.readouterr()
    assert main(["bench", "dynamics", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "needs a model with a K loop" in err, err
