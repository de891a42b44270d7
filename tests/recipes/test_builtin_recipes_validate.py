"""Every recipe in recipes/ validates: ``parallax validate`` exits 0.

Recipes that stream from the Hugging Face hub are pointed at a small local corpus (``data.files``),
the documented offline route, since tests do not reach the network.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from parallax.cli.main import main

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def offline_overrides(recipe: Path, tmp_path: Path) -> list[str]:
    data = yaml.safe_load(recipe.read_text())["data"]
    if "dataset" not in data:
        return []
    corpus = tmp_path / "stories.txt"
    corpus.write_text("\n<|endoftext|>\n".join(
        f"Once upon a time, a child named Sam{i} found a ball. Sam{i} played with it all day." for i in range(60)
    ))
    return [f"data.files=[{corpus}]", f"data.cache_dir={tmp_path / 'cache'}", "data.tokenizer=byte",
            "data.seq_len=16", "data.val_stories=4", "data.val_sequences=4"]


def test_there_are_recipes_to_check():
    names = {p.stem for p in RECIPES}
    assert {"recall", "recall_transformer", "tinystories_transformer", "tinystories_dualtrack"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_validates(recipe, tmp_path, capsys):
    rc = main(["validate", str(recipe), f"out_dir={tmp_path / 'run'}", *offline_overrides(recipe, tmp_path)])
    assert rc == 0, capsys.readouterr().err


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_opens_with_the_command_that_runs_it(recipe):
    assert recipe.read_text().splitlines()[0] == f"# parallax run recipes/{recipe.name}"
