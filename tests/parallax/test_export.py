"""``parallax export``: the folder's files, and generate / eval / load_pretrained on it agree with the run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import parallax
from parallax.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "data"))
from text_helpers import text_recipe, write_txt  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("export")
    recipe = text_recipe(tmp, [write_txt(tmp / "s.txt", 40)], tokenizer="bpe", vocab_size=300)
    assert main(["run", str(recipe), "train.max_steps=4"]) == 0
    assert main(["export", str(tmp / "run"), "--to", str(tmp / "hf")]) == 0
    return tmp / "run", tmp / "hf"


def _generate(path: Path, capsys) -> dict:
    assert main(["generate", str(path), "--prompt", "Once upon", "--max-new-tokens", "12", "--temperature", "0",
                 "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_export_writes_config_weights_tokenizer_and_card(exported):
    run, hf = exported
    assert sorted(p.name for p in hf.iterdir()) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((hf / "config.json").read_text())
    assert config["recipe"]["model"]["type"] == "cws" and config["recipe"]["data"]["type"] == "tinystories"
    assert config["components"]["models/cws"].startswith("parallax-cws==")
    assert "builtin-models" in config["plugins"] and config["step"] == 4
    assert (hf / "model.safetensors").read_bytes() == (run / "step-00000004" / "model.safetensors").read_bytes()
    card = (hf / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: parallax") and "parallax.load_pretrained" in card


def test_generate_on_the_export_gives_the_runs_tokens_and_k(exported, capsys):
    run, hf = exported
    a, b = _generate(run, capsys), _generate(hf, capsys)
    assert len(a["tokens"]) == 12 and a["tokens"] == b["tokens"]
    assert [t["k"] for t in a["tokens"]] == [t["k"] for t in b["tokens"]]


def test_eval_and_load_pretrained_read_the_export(exported, capsys):
    run, hf = exported
    assert main(["eval", str(run), "--json"]) == 0
    on_run = json.loads(capsys.readouterr().out)
    assert main(["eval", str(hf), "--json"]) == 0
    on_export = json.loads(capsys.readouterr().out)
    assert on_export["val_loss"] == pytest.approx(on_run["val_loss"], rel=1e-6)
    loaded = parallax.load_pretrained(hf)
    assert not loaded.model.training and loaded.tokenizer is not None
    ids = torch.tensor([loaded.tokenizer.encode("Once upon a time")])
    reference = parallax.load_pretrained(run).model(ids).logits
    torch.testing.assert_close(loaded.model(ids).logits, reference)


def test_export_refuses_a_folder_with_files_and_push_says_why_it_cannot(exported, tmp_path, capsys, monkeypatch):
    run, hf = exported
    assert main(["export", str(run), "--to", str(hf)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token
    assert main(["export", str(run), "--to", str(tmp_path / "out"), "--push", "someone/tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("parallax: error: --push: ") and "the export is in" in err[0]
    assert (tmp_path / "out" / "model.safetensors").is_file()  # the export stays
