"""The shipped baseline recipes train as they are, on every modality the CWS trains on.

Text (tinystories) and synthetic recall are token sequences: each baseline recipe trains a few
steps and its validation loss is finite and below a uniform guess. Digits are images: a baseline
reads them through the CWS's own image encoder and classifier decoder, and without them it says
in one line what to add.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from parallax.cli.main import main

ROOT = Path(__file__).resolve().parents[3] / "recipes"
sys.path.insert(0, str(ROOT.parent / "tests" / "plugins" / "data"))
from text_helpers import write_txt  # noqa: E402

TEXT = ["tinystories_transformer", "tinystories_transformer_2layer", "tinystories_dualtrack"]
RECALL = ["recall_transformer", "recall_transformer_2layer"]
SMALL = ["train.batch_size=4", "train.max_steps=3", "train.eval_every=3", "train.max_minutes=null",
         "train.progress=false"]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("name", TEXT)
def test_text_baselines_train_on_local_stories(name, tmp_path, capsys):
    text = write_txt(tmp_path / "stories.txt", 40)
    data = [f"data.files=[{text}]", f"data.cache_dir={tmp_path / 'cache'}", "data.tokenizer=byte", "data.seq_len=16",
            "data.val_stories=4", "data.val_sequences=2"]
    out = tmp_path / "run"
    # width 32 keeps the step fast; the recipe's layers, heads, loops and swap stay as shipped
    rc = main(["run", str(ROOT / f"{name}.yaml"), f"out_dir={out}", "model.n_embd=32", *data, *SMALL])
    assert rc == 0, capsys.readouterr().err
    s = summary(out)
    assert s["step"] == 3
    assert math.isfinite(s["val_loss"]) and s["val_loss"] < math.log(257)  # below a uniform guess over bytes


@pytest.mark.parametrize("name", RECALL)
def test_recall_baselines_train_as_shipped(name, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", str(ROOT / f"{name}.yaml"), f"out_dir={out}", "data.val_size=32", *SMALL])
    assert rc == 0, capsys.readouterr().err
    s = summary(out)
    assert s["step"] == 3 and 0 <= s["val_accuracy"] <= 1 and math.isfinite(s["val_loss"])


@pytest.mark.parametrize("model", ["transformer", "dualtrack"])
def test_baselines_without_an_image_encoder_say_what_to_add_on_digits(model, tmp_path, capsys):
    rc = main(["validate", str(ROOT / "digits.yaml"), "~model",
               f"model={{type: {model}, n_embd: 16, n_head: 2, n_kv_heads: 1}}", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"model.type: {model} reads tokens" in err and "model.encoder={type: image" in err, err


@pytest.mark.parametrize("model", ["transformer", "dualtrack"])
def test_baselines_train_on_digits_through_the_image_encoder_and_classifier(model, tmp_path, capsys):
    out = tmp_path / "run"
    io = "encoder: {type: image, patch: 4}, decoder: {type: classifier, pool: mean, hidden: 16}"
    rc = main(["run", str(ROOT / "digits.yaml"), "~model",
               f"model={{type: {model}, n_layer: 1, n_embd: 16, n_head: 2, n_kv_heads: 1, {io}}}",
               f"out_dir={out}", *SMALL])
    assert rc == 0, capsys.readouterr().err
    s = summary(out)
    assert s["step"] == 3 and 0 <= s["val_accuracy"] <= 1 and math.isfinite(s["val_loss"])


def test_the_shipped_digits_baseline_trains(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "digits_transformer.yaml"), f"out_dir={out}", *SMALL]) == 0, capsys.readouterr().err
    assert summary(out)["step"] == 3
