"""``parallax bench halting``: the three settings, their budgets and the work each really does."""
from __future__ import annotations

import json

import pytest

from parallax.cli.main import main


def test_bench_halting_reports_the_three_settings(tiny_recipe, capsys):
    assert main(["bench", "halting", str(tiny_recipe), "--batch-size", "3", "--batches", "2",
                 "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    a, b, c = out["rows"]
    assert [r["setting"] for r in out["rows"]] == ["a_adaptive", "b_fixed_round_m", "c_fixed_k_max"]
    assert out["batch_shape"][0] == 3
    k_max = out["k_max"]
    assert a["k_budget"] == c["k_budget"] == k_max and b["k_budget"] == max(1, round(out["m"]))
    # fixed K computes every position at every step; the adaptive run never does more than that
    assert c["position_steps_per_token"] == k_max and c["k_mean"] == k_max
    assert b["position_steps_per_token"] == b["k_budget"]
    # the active positions are packed: (a) computes exactly the steps its positions take, no padding
    assert a["position_steps_per_token"] == pytest.approx(a["k_mean"], abs=1e-3)
    # a batch's K loop runs until its slowest position halts; fixed K runs exactly the budget
    assert c["iterations_per_k_loop"] == k_max and b["iterations_per_k_loop"] == b["k_budget"]
    assert a["k_mean"] <= a["iterations_per_k_loop"] <= k_max
    assert out["a_over_b_lockstep"] == round(a["iterations_per_k_loop"] / b["k_budget"], 3)
    # a per-row gather, padded to each step's busiest row, could only compute more
    assert out["position_steps_row_bound"] >= a["position_steps_per_token"] - 1e-3
    assert 0 <= out["a_at_k_max"] <= 1
    assert out["a_over_b"] > 0 and out["c_over_a_floor"] == round(k_max / out["m"] * 0.7, 3)
    assert out["compiled"] is False


def test_bench_halting_times_the_compiled_k_loop_when_asked(tiny_recipe, capsys):
    """train.compile=true: the same three settings through the compiled K loop, whose masked frozen steps
    compute the whole block while any of its positions settles, the compile left out of the timings."""
    assert main(["bench", "halting", str(tiny_recipe), "train.compile=true", "--batch-size", "3", "--batches", "2",
                 "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    a, b, c = out["rows"]
    assert out["compiled"] is True and out["warm_up_seconds"] > 0
    assert c["k_mean"] == c["position_steps_per_token"] == out["k_max"]
    assert a["position_steps_per_token"] >= a["k_mean"] - 1e-3  # masked, not packed: never fewer than taken
    assert all(r["k_loop_seconds_per_token"] > 0 for r in out["rows"])


def test_bench_halting_rejects_an_empty_batch(tiny_recipe, capsys):
    with pytest.raises(SystemExit) as e:  # argparse checks the count
        main(["bench", "halting", str(tiny_recipe), "--batch-size", "0"])
    assert e.value.code == 2
    assert "--batch-size: must be at least 1" in capsys.readouterr().err


def test_bench_halting_incremental_settles_one_position_at_a_time(tiny_recipe, capsys):
    assert main(["bench", "halting", str(tiny_recipe), "--mode", "incremental", "--sequences", "2",
                 "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    a, b, c = out["rows"]
    assert out["mode"] == "incremental" and out["batch_shape"][0] == 1
    # one position per K loop: the work done is exactly the K spent, with no padding
    for r in (a, b, c):
        assert r["position_steps_per_token"] == r["k_mean"] == r["iterations_per_k_loop"]
    assert c["k_mean"] == out["k_max"] and b["k_mean"] == b["k_budget"]
    assert a["k_mean"] == out["m"]


def test_bench_halting_takes_a_run_directory_and_times_the_k_loop_alone(tiny_recipe, tmp_path, capsys):
    from parallax.testing import train

    train(tiny_recipe, tmp_path / "trained", steps=3)
    assert main(["bench", "halting", str(tmp_path / "trained"), "--batch-size", "3", "--batches", "2",
                 "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint"] == str(tmp_path / "trained" / "step-00000003")
    for row in out["rows"]:  # timed apart from the whole forward (how they compare is a benchmark's, not a test's)
        assert row["k_loop_seconds_per_token"] > 0 and row["seconds_per_token"] > 0
    a, _, c = out["rows"]
    assert out["k_loop_a_over_c"] == round(a["k_loop_seconds_per_token"] / c["k_loop_seconds_per_token"], 3)
    assert out["m_over_k_max"] == round(out["m"] / out["k_max"], 3)


def test_on_a_trained_multihop_checkpoint_the_work_is_exactly_the_steps_taken(tmp_path, capsys):
    """The packed K loop counts what it computes block by block (``position_steps``); each position's
    K summed (``k_sum``) is its frozen steps plus the live ones. On a trained multihop checkpoint whose
    positions halt unevenly, the two agree exactly: a halted position costs nothing."""
    from parallax.testing import write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path / "tiny.yaml", tmp_path / "run")
    data = "{type: multihop, n_nodes: 16, n_chains: 1, n_queries: 3, h_max: 2, max_hops: 4, val_size: 8}"
    assert main(["run", str(recipe), f"data={data}", "model.k_max=8", "train.max_steps=3",
                 "train.eval_every=100"]) == 0
    capsys.readouterr()
    assert main(["bench", "halting", str(tmp_path / "run"), "--batch-size", "4", "--batches", "2",
                 "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint"] == str(tmp_path / "run" / "step-00000003")
    a, b, c = out["rows"]
    for row in (a, b, c):
        assert row["position_steps"] == row["k_sum"]
    tokens = out["tokens"]
    assert c["k_sum"] == 8 * tokens and b["k_sum"] == b["k_budget"] * tokens
    assert a["k_sum"] < c["k_sum"] and 0 < out["a_at_k_max"] < 1  # (a) halted some positions, not all
