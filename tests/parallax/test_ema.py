"""``train.ema``: an average of the weights, evaluated with, saved beside each checkpoint, restored on resume."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from parallax.ema import EMA, FILE
from parallax.errors import ConfigError
from parallax.recipe import load_recipe
from parallax.runs import open_run
from parallax.testing import train, write_tiny_recipe


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_recipe(tmp_path / "tiny.yaml", tmp_path / "own")


def test_the_average_follows_the_formula():
    class T:  # the trainer, as far as the callback reads it
        model = torch.nn.Linear(2, 1, bias=False)
        resume_from = None

    t = T()
    ema = EMA(0.5)
    with torch.no_grad():
        t.model.weight.fill_(0.0)
    ema.on_setup(t)
    with torch.no_grad():
        t.model.weight.fill_(1.0)
    ema.on_step(t, 0.0)  # first update: decay min(0.5, 2/11) = 2/11
    assert ema.shadow["weight"] == pytest.approx(torch.full((1, 2), 9 / 11))
    ema.on_step(t, 0.0)  # decay min(0.5, 3/12) = 1/4
    assert ema.shadow["weight"] == pytest.approx(torch.full((1, 2), 1 - (2 / 11) * 0.25))
    with ema.swapped(t.model):
        assert torch.allclose(t.model.weight, ema.shadow["weight"])
    assert torch.all(t.model.weight == 1.0)  # the training weights are back


def test_saved_with_each_checkpoint_and_used_for_evaluation(tiny, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny, out, "train.ema=0.9", steps=6)
    step = out / "step-00000006"
    shadow, weights = load_file(str(step / FILE)), load_file(str(step / "model.safetensors"))
    assert set(shadow) == set(weights)
    assert any(not torch.equal(shadow[k], weights[k]) for k in weights if weights[k].is_floating_point())
    # open_run (parallax eval) loads the average, and the run's final evaluation used it
    run = open_run(out)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, shadow[k].to(v.dtype)), k
    from parallax.evaluate import evaluate
    val_loss = evaluate(run.model, run.data, torch.device("cpu"))["val_loss"]
    assert val_loss == pytest.approx(summary["val_loss"], rel=1e-5)


def test_the_average_survives_resume(tiny, tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    train(tiny, straight, "train.ema=0.9", steps=6)
    train(tiny, resumed, "train.ema=0.9", steps=3)
    train(tiny, resumed, "train.ema=0.9", "train.resume=auto", steps=6)
    a, b = load_file(str(straight / "step-00000006" / FILE)), load_file(str(resumed / "step-00000006" / FILE))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_decay_outside_0_1_is_one_line(tiny):
    for bad in ("1.0", "0", "-0.5"):
        with pytest.raises(ConfigError, match="train.ema"):
            load_recipe(str(tiny), [f"train.ema={bad}"])
