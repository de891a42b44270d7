"""Figures from a run: elapsed time from the records, the figures of a trained tiny run as valid PNG
files, a `bench dynamics` result read from a file, and a model without a K loop."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from parallax.errors import ConfigError  # noqa: E402
from parallax.plot import Curves, elapsed_seconds, run_figures  # noqa: E402
from parallax.testing import train, write_tiny_recipe  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plot")
    recipe = write_tiny_recipe(tmp / "tiny.yaml", tmp / "run")
    train(recipe, tmp / "run", steps=6)
    return tmp / "run"


def test_elapsed_time_is_rebuilt_from_tokens_per_s():
    # 10 tokens per step: 2 steps at 20 tokens/s take 1 s, then 3 steps at 10 tokens/s take 3 s
    records = [{"step": 2, "loss": 3.0, "tokens_per_s": 20.0}, {"step": 5, "loss": 2.0, "tokens_per_s": 10.0},
               {"step": 5, "val_loss": 2.5}]
    assert elapsed_seconds(records[:2], 10) == [1.0, 4.0]
    curves = Curves.of(records, 10)
    assert curves.train_time == [1.0, 4.0] and curves.eval_time == [4.0] and not curves.measured_time


def test_a_time_field_is_used_when_every_record_has_it():
    records = [{"step": 2, "loss": 3.0, "tokens_per_s": 20.0, "time": 1_700_000_010.0},
               {"step": 4, "loss": 2.0, "tokens_per_s": 20.0, "time": 1_700_000_020.0},
               {"step": 4, "val_loss": 2.5, "time": 1_700_000_025.0}]
    curves = Curves.of(records, 10)  # the first window began 1 s before its record (2 steps x 10 / 20)
    assert curves.measured_time
    assert curves.train_time == [1.0, 11.0] and curves.eval_time == [16.0]


def test_a_trained_run_gives_valid_pngs(tiny_run, tmp_path):
    import matplotlib.image as mpimg

    made = run_figures(tiny_run)
    paths = made.figures.write(tmp_path / "plots")
    names = {p.stem for p in paths}
    assert {"loss_step", "loss_time", "accuracy_step", "k_mean_step", "k_histogram", "k_by_surprisal",
            "dynamics"} <= names
    for p in paths:
        assert p.read_bytes()[:8] == PNG
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert sum(made.evaluation["k_histogram"].values()) == 16 * 10  # val_size sequences x 10 positions
    assert made.dynamics["k"] == 4 and len(made.dynamics["rows"]) == 4


def test_a_bench_dynamics_result_is_read_from_its_file(tiny_run, tmp_path, capsys):
    from parallax.cli.main import main

    assert main(["bench", "dynamics", str(tiny_run), "--k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    path = tmp_path / "dyn.json"
    path.write_text(json.dumps(result))
    made = run_figures(tiny_run, dynamics_file=path)
    assert made.dynamics == result and "dynamics" in made.figures.figures
    for text, says in (("[1, 2", "cannot read it as JSON"), ('{"k": 3}', "not a `parallax bench dynamics --json`")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ConfigError, match=f"--dynamics .*bad.json: {says}"):
            run_figures(tiny_run, dynamics_file=tmp_path / "bad.json")


def test_a_model_without_a_k_loop_gets_the_curves_and_notes(tmp_path):
    recipe = write_tiny_recipe(tmp_path / "t.yaml", tmp_path / "run")
    train(recipe, tmp_path / "run", "~model", "model={type: transformer, n_embd: 16, n_layer: 1, n_head: 2}", steps=3)
    made = run_figures(tmp_path / "run")
    names = set(made.figures.figures)
    assert {"loss_step", "loss_time", "accuracy_step"} <= names
    assert not names & {"k_mean_step", "k_histogram", "k_by_surprisal", "dynamics"}
    assert any("no K" in n for n in made.figures.notes)
