"""train.compile: false | true | auto, the compiled K loop's training against eager, compile time apart."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from parallax import compiling
from parallax.compiling import AUTO_MIN_STEPS, compile_model, wanted
from parallax.errors import ConfigError
from parallax.recipe import load_recipe
from parallax.testing import train as train_tiny
from parallax.trainer import Trainer


class _KLoop(nn.Module):
    has_k_loop = True

    def compile_in_place(self):
        self.done = True


CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_true_and_false_are_what_they_say():
    assert wanted(True, nn.Linear(1, 1), CUDA) and not wanted(False, _KLoop(), CPU, 10 ** 6)


def test_auto_compiles_a_long_k_loop_run_on_the_cpu_only(monkeypatch):
    monkeypatch.setattr(compiling, "has_cpp_compiler", lambda: True)
    assert wanted("auto", _KLoop(), CPU, AUTO_MIN_STEPS)
    assert not wanted("auto", _KLoop(), CPU, AUTO_MIN_STEPS - 1)  # the compile would not pay back
    assert not wanted("auto", _KLoop(), CPU, None)  # evaluation, generation
    assert not wanted("auto", _KLoop(), CUDA, 10 ** 6)  # not measured there
    assert not wanted("auto", nn.Linear(1, 1), CPU, 10 ** 6)  # no K loop
    monkeypatch.setattr(compiling, "has_cpp_compiler", lambda: False)
    assert not wanted("auto", _KLoop(), CPU, 10 ** 6)  # inductor could not build its CPU kernels


def test_a_model_that_compiles_in_place_keeps_its_module_and_state_dict():
    m = _KLoop()
    assert compile_model(m) is m and m.done
    lin = nn.Linear(2, 2)
    wrapped = compile_model(lin)
    assert wrapped is not lin and wrapped._orig_mod is lin


def test_a_bad_setting_names_the_key_and_the_choices(tiny_recipe):
    with pytest.raises(ConfigError, match=r"train\.compile: must be false, true or auto \(got .fast.\)"):
        load_recipe(str(tiny_recipe), ["train.compile=fast"])


def test_compiled_training_follows_the_eager_loss_curve(tiny_recipe, tmp_path):
    """The tiny recipe (momentum halting, a K ramp) for 8 steps: the same losses within float tolerance,
    and the compile time reported apart from the tokens/s."""
    runs = {}
    for mode in ("false", "true"):
        summary = train_tiny(tiny_recipe, tmp_path / mode, f"train.compile={mode}", "model.train_k=max",
                             "train.log_every=1", steps=8)
        recs = [json.loads(ln) for ln in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        runs[mode] = summary, [r for r in recs if "loss" in r]
    (eager, eager_recs), (comp, comp_recs) = runs["false"], runs["true"]
    assert [r["loss"] for r in comp_recs] == pytest.approx([r["loss"] for r in eager_recs], rel=1e-4)
    assert comp["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-4)
    assert "compile_seconds" not in eager and comp["compile_seconds"] >= 0
    assert all(r["tokens_per_s"] for r in eager_recs)
    # the steps that compiled are left out of tokens/s and counted in compile_seconds instead
    compiled_windows = [r for r in comp_recs if "compile_seconds" in r]
    assert sum(r["compile_seconds"] for r in compiled_windows) == pytest.approx(comp["compile_seconds"], abs=0.2)


def test_the_trainer_compiles_only_when_wanted(tiny_recipe, tmp_path):
    t = Trainer(load_recipe(str(tiny_recipe), [f"out_dir={tmp_path}", "train.compile=auto", "train.max_steps=5"]))
    t.setup()
    assert not t.compiled and not t.model.compiled_k_loop  # 5 steps: a compile would not pay
    t.lock.release()
