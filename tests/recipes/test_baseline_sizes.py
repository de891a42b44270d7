"""The baselines are the sizes their recipes and docs/results.md say they are.

``recall_transformer.yaml`` and ``multihop_transformer.yaml`` are compared with their CWS "at equal
size", and ``recall_transformer_2layer.yaml`` is the seed's "2-layer transformer with twice the
parameters"; a width changed in a recipe without its claim fails here. Counts are taken as ``bench compare``
takes them (the model built on the meta device; a tied head counted once).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from parallax.bench.compare import _info, recipe_params
from parallax.recipe import load_recipe
from parallax.registry import get_registry

ROOT = Path(__file__).resolve().parents[2] / "recipes"


def params(name: str) -> int:
    registry = get_registry()
    recipe = load_recipe(str(ROOT / f"{name}.yaml"), [], registry)
    return recipe_params(recipe, _info(recipe, registry), registry)["params"]


@pytest.mark.parametrize(("name", "cws_recipe", "low", "high"), [
    ("recall_transformer", "recall", 0.95, 1.05),         # equal size, the 3-token window's taps included
    ("recall_transformer_2layer", "recall", 1.9, 2.3),    # twice the CWS's parameters, 2 layers
    ("multihop_transformer", "multihop", 0.95, 1.05),     # equal size, at the depth the hops need
])
def test_baselines_are_the_size_they_claim(name, cws_recipe, low, high):
    cws, baseline = params(cws_recipe), params(name)
    ratio = baseline / cws
    assert low <= ratio <= high, f"{name}: {baseline:,} parameters, {ratio:.2f}x the CWS's {cws:,}"
