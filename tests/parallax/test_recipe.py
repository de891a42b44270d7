"""Recipe overrides: ``key=value`` merges into a mapping, and a mapping naming another plugin type replaces it."""
from __future__ import annotations

from parallax.recipe import apply_overrides

BASE = {"model": {"decoder": {"type": "motor", "layers": 2, "heads": 4}, "k_max": 16}}


def test_a_mapping_of_the_same_type_merges():
    out = apply_overrides(BASE, ["model.decoder={type: motor, layers: 1}"])
    assert out["model"]["decoder"] == {"type": "motor", "layers": 1, "heads": 4}


def test_a_mapping_of_another_type_replaces_the_component():
    out = apply_overrides(BASE, ["model.decoder={type: classifier, pool: mean}"])
    assert out["model"]["decoder"] == {"type": "classifier", "pool": "mean"}


def test_a_mapping_without_a_type_merges_and_scalars_set():
    out = apply_overrides(BASE, ["model.decoder={heads: 8}", "model.k_max=4", "model.new={type: x}"])
    assert out["model"]["decoder"] == {"type": "motor", "layers": 2, "heads": 8}
    assert out["model"]["k_max"] == 4 and out["model"]["new"] == {"type": "x"}
    assert BASE["model"]["decoder"]["layers"] == 2  # the input is not modified
