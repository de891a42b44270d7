"""Swapping the modality by recipe: recall, tinystories and digits share one workspace-and-experts
block, differ only in encoder, decoder and data, and each trains under it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from parallax.testing import train

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {name: ROOT / "recipes" / f"{name}.yaml" for name in ("recall", "tinystories", "digits")}

sys.path.insert(0, str(ROOT / "tests" / "plugins" / "data"))
from text_helpers import write_txt  # noqa: E402


def _model(name: str) -> dict:
    return yaml.safe_load(RECIPES[name].read_text())["model"]


def test_one_shared_block():
    blocks = {}
    for name in RECIPES:
        model = _model(name)
        blocks[name] = {k: v for k, v in model.items() if k not in ("encoder", "decoder")}
    assert blocks["recall"] == blocks["tinystories"] == blocks["digits"]
    assert {_model(n)["encoder"]["type"] for n in RECIPES} == {"token", "image"}
    assert _model("digits")["decoder"]["type"] == "classifier"


@pytest.mark.parametrize("name", list(RECIPES))
def test_the_block_trains_under_each_modality(name, tmp_path):
    small = ["train.batch_size=4", "train.eval_every=100", "train.threads=1"]
    extra = {
        "recall": ["data.val_size=8"],
        "tinystories": [f"data.files={write_txt(tmp_path / 's.txt', 30)}", "data.seq_len=16", "data.val_sequences=2",
                        "data.vocab_size=300", f"data.cache_dir={tmp_path / 'cache'}"],
        "digits": ["data.test_fraction=0.02"],
    }[name]
    summary = train(RECIPES[name], tmp_path / "run", *small, *extra, steps=2)
    assert summary["step"] == 2 and summary["val_loss"] > 0
    assert 1 <= summary["val_k_mean"] <= 16
