"""cat --doc, cp for a copy's own name, did-you-mean for commands, validate without the data, --device."""
from __future__ import annotations

import pytest
import torch
import yaml

from parallax.cli.main import main
from parallax.recipe import load_recipe
from parallax.recipe_doc import document


def test_cat_doc_shows_every_key_with_type_default_allowed_and_description(tiny_recipe, capsys):
    assert main(["cat", str(tiny_recipe), "--doc"]) == 0
    out = capsys.readouterr().out
    docs = document(load_recipe(str(tiny_recipe)))
    keys = [d.key for d in docs]
    for key in keys:
        assert f"\n{key} (" in "\n" + out
    assert {"seed", "train.max_steps", "train.optimizer.lr", "train.loggers", "model.k_max", "model.experts",
            "model.experts.0.slots", "model.halting.rel_tol", "data.n_keys"} <= set(keys)
    assert "train.precision (str) = auto  [default auto; one of auto, fp32, bf16, fp16]" in out
    assert "train.max_steps (int) = 6  [default 1000; > 0]\n    optimizer steps" in out
    assert "model.halting (halting rule) = momentum  [required; registered: fixed, learned, momentum]" in out
    assert "\nmodel.halting.type " not in out  # a component's type is its own row
    assert [d.key for d in docs if not d.description] == []  # every key's description, from the schemas
    assert "(no description)" not in out


def test_cp_rewrites_out_dir_and_the_opening_comment_for_the_copy(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["cp", "tinystories", "my.yaml"]) == 0
    text = (tmp_path / "my.yaml").read_text()
    assert text.splitlines()[0] == "# parallax run my.yaml"
    assert yaml.safe_load(text)["out_dir"] == "runs/my"
    assert "runs/tinystories" not in text and "recipes/tinystories.yaml" not in text
    assert "parallax eval runs/my" in text  # the comments name the copy's runs
    assert load_recipe("my.yaml").out_dir == "runs/my"


@pytest.mark.parametrize("typed,meant", [("train", "run"), ("evaluate", "eval"), ("valdate", "validate")])
def test_unknown_commands_suggest_the_right_one(typed, meant, capsys):
    with pytest.raises(SystemExit) as e:
        main([typed, "recall"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"unknown command '{typed}'; did you mean `parallax {meant}`?" in err and len(err.splitlines()) == 1


def test_validate_checks_a_text_recipe_without_its_data(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("PARALLAX_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["validate", "tinystories"]) == 0
    out = capsys.readouterr().out
    assert "valid (cws model, tinystories data; data not read: built for vocab_size 4096)" in out
    assert not (tmp_path / "cache").exists()  # nothing tokenized
    assert main(["validate", "tinystories", "data.tokenizer=byte", "data.files=nowhere.txt"]) == 2
    assert "data.files: nowhere.txt does not exist" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(tiny_recipe, tmp_path, capsys):
    assert main(["run", str(tiny_recipe), "train.max_steps=1"]) == 0
    capsys.readouterr()
    for cmd in (["eval", str(tmp_path / "run")], ["generate", str(tmp_path / "run"), "--prompt", "a"]):
        assert main([*cmd, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err == ("parallax: error: --device: cuda was asked for but no CUDA device is available; "
                       "use --device cpu\n")
