"""Bounds before allocation: what cannot fit is refused from the recipe, in one line, before any tensor exists."""
from __future__ import annotations

import pytest

from parallax.cli.main import main


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_model_too_large_for_the_machine_is_refused_naming_the_keys(command, tiny_recipe, capsys):
    assert main([command, str(tiny_recipe), "model.d_model=1000000"]) == 2
    err = one_line(capsys)
    assert "model: needs at least" in err and "more than the machine's memory" in err
    assert "shrink model.d_model" in err and "raise train.max_memory_gb" in err


def test_the_limit_is_the_users_to_set(tiny_recipe, capsys):
    assert main(["validate", str(tiny_recipe), "train.max_memory_gb=0.000001"]) == 2
    assert "more than train.max_memory_gb" in one_line(capsys)
    assert main(["validate", str(tiny_recipe), "train.max_memory_gb=1"]) == 0


def test_a_size_no_tensor_can_have_is_one_line(tiny_recipe, capsys):
    assert main(["validate", str(tiny_recipe), f"model.d_model={2**62}"]) == 2
    one_line(capsys)


def test_an_endless_window_is_refused_by_the_schema(tiny_recipe, capsys):
    assert main(["validate", str(tiny_recipe), "model.encoder.window=100000000"]) == 2
    assert "model.encoder.window" in one_line(capsys)


@pytest.mark.parametrize("args", [["bench", "memory", "--k", "1000000"], ["bench", "halting", "--repeats", "10000000"]])
def test_counts_on_the_command_line_are_bounded(args, tiny_recipe, capsys):
    with pytest.raises(SystemExit) as caught:
        main([*args[:2], str(tiny_recipe), *args[2:]])
    assert caught.value.code == 2
    assert "must be at most" in capsys.readouterr().err
