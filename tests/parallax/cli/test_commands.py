"""The CLI verbs on good input: ls, cp, cat, validate, plugins, bench memory."""
from __future__ import annotations

import json

import yaml

from parallax.cli.main import main


def test_ls_lists_builtin_recipes(capsys):
    assert main(["ls"]) == 0
    assert "recall" in capsys.readouterr().out


def test_cp_copies_a_builtin_recipe(tmp_path, capsys):
    assert main(["cp", "recall", str(tmp_path)]) == 0
    text = (tmp_path / "recall.yaml").read_text()
    assert text.startswith(f"# parallax run {tmp_path / 'recall.yaml'}\n")  # the copy's own path


def test_cat_resolves_defaults_and_overrides(tiny_recipe, capsys):
    assert main(["cat", str(tiny_recipe), "model.k_max=7", "~train.schedule"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["k_max"] == 7
    assert cfg["model"]["experts"][0]["dt_min"] == 0.001  # a plugin default, filled in
    assert cfg["train"]["schedule"] == {"warmup_steps": 50, "min_lr_ratio": 0.1}  # removed -> default
    assert cfg["model"]["workspace"]["init_h"] == "obs"


def test_validate_accepts_a_good_recipe(tiny_recipe, capsys):
    assert main(["validate", str(tiny_recipe)]) == 0
    assert "valid" in capsys.readouterr().out


def test_builtin_recipe_by_name_validates(capsys):
    assert main(["validate", "recall"]) == 0


def test_plugins_json_and_alias(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    experts = next(r for r in rows if "experts" in r["provides"])
    assert {"name", "version", "provides", "hooks", "error"} <= experts.keys()
    assert "mamba_siso" in experts["provides"]["experts"] and experts["error"] is None
    assert main(["list-plugins", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows


def test_bench_memory_json(tiny_recipe, capsys):
    assert main(["bench", "memory", str(tiny_recipe), "--k", "2", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert [r["k"] for r in rows] == [2, 8]
    assert rows[1]["saved_ratio_vs_first"] <= 1.05 and rows[0]["peak_bytes"] is None  # CPU
