"""``parallax bench seeds`` / ``bench sweep`` / ``bench compare --seeds``: one process per seed, mean ± std."""
from __future__ import annotations

import json

import pytest
import yaml

from parallax.bench import seeds, sweep
from parallax.cli.main import main
from parallax.errors import ConfigError
from parallax.testing import write_tiny_recipe


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_recipe(tmp_path / "tiny.yaml", tmp_path / "own")


def test_seeds_trains_each_seed_and_reports_the_spread(tiny, tmp_path, capsys):
    out = tmp_path / "seeds"
    rc = main(["bench", "seeds", str(tiny), "--seeds", "0", "1", "--steps", "3", "--threshold", "0.0",
               "--out", str(out), "--json"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    rows = result["seeds"]
    assert [r["seed"] for r in rows] == [0, 1]
    for r in rows:
        assert r["metric"] == "val_accuracy" and r["steps"] == 3
        # the best over the run's evaluations (steps 3 and the final one) is at least the final one
        assert r["best"] >= r["final"] and r["curve"] and r["curve"][-1] == [3, r["final"]]
        assert r["reached_at"] == 3  # a threshold of 0 is met at the first evaluation
        config = (out / f"seed-{r['seed']}" / "config.yaml").read_text()
        assert f"seed: {r['seed']}" in config and "threads: 1" in config
    finals = [r["final"] for r in rows]
    s = result["summary"]
    assert s["final"]["mean"] == pytest.approx(sum(finals) / 2) and s["final"]["n"] == 2
    assert s["final"]["std"] == pytest.approx(abs(finals[0] - finals[1]) / 2 ** 0.5)
    assert s["share_at_threshold"] == 1.0
    assert not (tmp_path / "own").exists()  # the recipe's own out_dir is never used


def test_seeds_table_and_a_taken_out_folder(tiny, tmp_path, capsys):
    out = tmp_path / "seeds"
    assert main(["bench", "seeds", str(tiny), "--seeds", "3", "--steps", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "final val_accuracy" in text and "of seeds at or above 0.95" in text
    assert main(["bench", "seeds", str(tiny), "--seeds", "3", "--steps", "2", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_at_step_is_the_last_evaluation_at_or_before_it():
    points = [(250, 0.1), (500, 0.4), (750, 0.6)]
    assert seeds.at_step(points, 600) == (500, 0.4) and seeds.at_step(points, 750) == (750, 0.6)
    assert seeds.at_step(points, 100) is None and seeds.at_step(points, None) is None
    rows = [{"metric": "val_accuracy", "final": f, "best": f, "train_seconds": 1.0, "at_step": a}
            for f, a in [(0.9, {"step": 500, "value": 0.4}), (0.8, {"step": 500, "value": 0.6})]]
    assert seeds.summarise(rows, None)["at_step"]["mean"] == pytest.approx(0.5)
    rows[1]["at_step"] = None  # a seed stopped before the step: no common figure
    assert "at_step" not in seeds.summarise(rows, None)


def test_text_seeds_report_loss_and_bits_per_byte_over_the_seeds():
    rows = [{"metric": "val_perplexity", "final": p, "best": p, "train_seconds": 1.0, "val_loss": loss, "val_bpb": b}
            for p, loss, b in [(20.0, 3.0, 1.1), (30.0, 3.4, 1.3)]]
    s = seeds.summarise(rows, None)
    assert s["val_bpb"]["mean"] == pytest.approx(1.2) and s["val_bpb"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert s["val_loss"]["mean"] == pytest.approx(3.2)
    del rows[1]["val_bpb"]  # a run without text (or an older row): no spread of a figure some seeds lack
    assert "val_bpb" not in seeds.summarise(rows, None)


def test_seeds_at_step_in_the_table(tiny, tmp_path, capsys):
    assert main(["bench", "seeds", str(tiny), "--seeds", "0", "--steps", "4", "--at-step", "3",
                 "--out", str(tmp_path / "s")]) == 0
    text = capsys.readouterr().out
    assert "at step <= 3" in text and "(step 3)" in text


def test_jobs_split_the_threads_so_the_cores_are_never_oversubscribed():
    assert seeds.thread_split(1, None, cpus=2) is None  # one run keeps the recipe's own threads
    assert seeds.thread_split(2, None, cpus=2) == 1
    assert seeds.thread_split(2, 4, cpus=16) == 4 and seeds.thread_split(4, 8, cpus=16) == 4
    with pytest.raises(ConfigError, match="oversubscribe"):
        seeds.thread_split(3, None, cpus=2)


def test_two_jobs_at_once(tiny, tmp_path, capsys):
    out = tmp_path / "j"
    rc = main(["bench", "seeds", str(tiny), "--seeds", "0", "1", "--steps", "2", "--jobs", "2", "--out", str(out),
               "--json"])
    if seeds.cpu_count() < 2:
        assert rc == 2
        return
    assert rc == 0, capsys.readouterr().err
    assert [r["seed"] for r in json.loads(capsys.readouterr().out)["seeds"]] == [0, 1]
    assert "threads: 1" in (out / "seed-1" / "config.yaml").read_text()


def test_repeated_seed_is_refused(tiny, capsys):
    assert main(["bench", "seeds", str(tiny), "--seeds", "1", "1", "--steps", "2"]) == 2
    assert "repeats a seed" in capsys.readouterr().err


def test_split_values_keeps_brackets_and_quotes_whole():
    assert sweep.split_values("1e-3, 3e-3") == ["1e-3", "3e-3"]
    assert sweep.split_values("[1,2],[3,4],'a,b'") == ["[1,2]", "[3,4]", "'a,b'"]
    assert sweep.grid(sweep.parse_sets(["a=1,2", "b=x,y"])) == [
        {"a": "1", "b": "x"}, {"a": "1", "b": "y"}, {"a": "2", "b": "x"}, {"a": "2", "b": "y"}]
    for bad in ("a", "=1", "a=", "a=1,,2"):
        with pytest.raises(ConfigError, match="--set"):
            sweep.parse_sets([bad])


def test_sweep_trains_every_point_and_seed_and_picks_the_best(tiny, tmp_path, capsys):
    out = tmp_path / "sw"
    rc = main(["bench", "sweep", str(tiny), "--set", "train.optimizer.lr=0.003,1e-9", "--seeds", "0", "1",
               "--steps", "3", "--out", str(out), "--json"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert [p["point"] for p in result["points"]] == [{"train.optimizer.lr": "0.003"}, {"train.optimizer.lr": "1e-9"}]
    for i, p in enumerate(result["points"]):
        assert [r["seed"] for r in p["seeds"]] == [0, 1]
        assert p["summary"]["final"]["n"] == 2
        config = yaml.safe_load((out / f"p{i:02d}-seed-1" / "config.yaml").read_text())
        assert config["train"]["optimizer"]["lr"] == float(p["point"]["train.optimizer.lr"])
        assert config["seed"] == 1
    means = [p["summary"]["final"]["mean"] for p in result["points"]]
    assert result["best"]["index"] == means.index(max(means))


def test_sweep_validates_every_point_first(tiny, tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["bench", "sweep", str(tiny), "--set", "model.k_max=4,0", "--steps", "2", "--out", str(out)]) == 2
    assert "k_max" in capsys.readouterr().err and not any(out.glob("*/metrics.jsonl"))


def test_compare_seeds_reports_mean_and_std_per_recipe(tiny, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["bench", "compare", str(tiny), "--seeds", "0", "1", "--steps", "2", "--out", str(out), "--json"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    (r,) = result["recipes"]
    accs = [x["val_accuracy"] for x in r["per_seed"]]
    assert [x["seed"] for x in r["per_seed"]] == [0, 1]
    assert r["val_accuracy"]["mean"] == pytest.approx(sum(accs) / 2) and r["val_accuracy"]["n"] == 2
    assert (out / "seed-1" / "tiny" / "summary.json").is_file()
