"""``model.train_k: poisson``: Huginn's log-normal Poisson K per training batch, clipped to the budget."""
from __future__ import annotations

import math

import pytest
import torch

from parallax.errors import ConfigError
from parallax.model import build_model, poisson_k
from parallax.protocols import DataInfo
from parallax.recipe import load_recipe
from parallax.testing import write_tiny_recipe


def test_draws_have_the_log_normal_poisson_mean():
    torch.manual_seed(0)
    draws = torch.tensor([poisson_k(6.0, 0.5) for _ in range(4000)], dtype=torch.float)
    # E[K] = E[Poisson(exp(tau))] + 1 = E[exp(tau)] + 1 = mean + 1 (the -sigma^2/2 keeps the mean)
    assert draws.mean().item() == pytest.approx(7.0, abs=0.25)
    assert draws.min().item() >= 1
    # the log-normal rate spreads K more than a plain Poisson (variance mean): Var = m + m^2 (e^{s^2} - 1)
    assert draws.var().item() == pytest.approx(6 + 36 * (math.exp(0.25) - 1), rel=0.2)


def test_the_model_clips_to_live_steps_and_k_max(tmp_path):
    path = write_tiny_recipe(tmp_path / "t.yaml", tmp_path / "o")
    recipe = load_recipe(str(path), ["model.k_max=5", "model.live_steps=2", "model.train_k=poisson", "model.k_mean=3"])
    model = build_model(recipe.model, DataInfo(vocab_size=16))
    torch.manual_seed(0)
    ks = [model.training_k() for _ in range(500)]
    assert min(ks) == 2 and max(ks) == 5 and 3 <= sum(ks) / len(ks) <= 4.5
    assert int(model.batches_seen) == 500


def test_bad_poisson_options_are_one_line(tmp_path):
    path = write_tiny_recipe(tmp_path / "t.yaml", tmp_path / "o")
    with pytest.raises(ConfigError, match="model.k_mean"):
        load_recipe(str(path), ["model.train_k=poisson", "model.k_mean=0"])
    with pytest.raises(ConfigError, match="model.train_k"):
        load_recipe(str(path), ["model.train_k=lognormal"])
