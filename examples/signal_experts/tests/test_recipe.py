"""The package as Parallax sees it once installed: its entry point, and its recipe training."""
from __future__ import annotations

from pathlib import Path

from parallax.registry import get_registry
from parallax.testing import train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "signal.yaml"


def test_experts_come_from_the_installed_entry_point():
    reg = get_registry()
    for name in ("causal_conv", "fourier_features"):
        plugin = reg.entry("experts", name).plugin
        assert (plugin.name, plugin.dist, plugin.version, plugin.error) == (
            "signal_experts", "parallax-signal-experts", "0.1.0", None)


def test_recipe_trains_for_a_few_steps(tmp_path):
    summary = train(RECIPE, tmp_path / "run", "data.val_size=32", "train.batch_size=8", steps=3)
    assert summary["step"] == 3 and 0 < summary["val_loss"] < 20


def test_a_tiny_recipe_with_both_experts_trains(make_tiny_recipe, tmp_path):
    recipe = make_tiny_recipe(experts=[{"type": "causal_conv", "slots": 2}, {"type": "fourier_features"}])
    assert train(recipe, tmp_path / "tiny", steps=2)["step"] == 2
