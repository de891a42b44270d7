"""Checkpoints record which plugin (and version) provides each component; loading one whose plugin
is missing names the package to install."""
from __future__ import annotations

import json

import pytest
import yaml
from torch import nn

from parallax import checkpoint as ckpt
from parallax.cli.main import main
from parallax.errors import CheckpointError
from parallax.registry import get_registry
from parallax.testing import tiny_recipe_data

COMPONENTS = {"experts/mamba_siso": "parallax-cws==0.1.0", "experts/wavelet": "parallax-wavelets==0.3.1"}


@pytest.fixture
def foreign(tmp_path):
    """A checkpoint written by a model that used the expert 'wavelet' from parallax-wavelets 0.3.1."""
    recipe = tiny_recipe_data(tmp_path / "run", experts=[{"type": "mamba_siso"}, {"type": "wavelet", "slots": 2}])
    return ckpt.save(tmp_path / "run", 7, nn.Linear(2, 2), {"step": 7}, yaml.safe_dump(recipe),
                     {"components": json.dumps(COMPONENTS), "plugins": json.dumps({"wavelets": "0.3.1"})})


def test_check_plugins_names_the_package_to_install(foreign):
    with pytest.raises(CheckpointError) as caught:
        ckpt.check_plugins(foreign, get_registry())
    assert str(caught.value) == (f"{foreign}: needs expert 'wavelet' from parallax-wavelets==0.3.1, which is not "
                                 f"installed; pip install parallax-wavelets")


def test_check_plugins_passes_when_every_component_is_installed(tmp_path):
    path = ckpt.save(tmp_path, 1, nn.Linear(2, 2), {}, "", {"components": json.dumps({"experts/siren": "parallax-cws==0.1.0"})})
    ckpt.check_plugins(path, get_registry())


@pytest.mark.parametrize("how", ["config", "resume"])
def test_the_cli_names_the_package_for_a_checkpoint_recipe(foreign, tmp_path, capsys, how):
    if how == "config":
        argv = ["validate", str(foreign / "config.yaml")]
    else:
        (tmp_path / "copy.yaml").write_text((foreign / "config.yaml").read_text())
        argv = ["run", str(tmp_path / "copy.yaml"), f"train.resume={foreign}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("pip install parallax-wavelets"), err


def test_a_recipe_without_a_checkpoint_keeps_the_registry_message(foreign, tmp_path, capsys):
    (tmp_path / "plain.yaml").write_text((foreign / "config.yaml").read_text())
    assert main(["validate", str(tmp_path / "plain.yaml")]) == 2
    assert "model.experts.1.type: unknown expert 'wavelet'" in capsys.readouterr().err


def test_state_tensors_are_detached_contiguous_cpu_copies_of_the_state_dict():
    lin = nn.Linear(3, 2)
    state = ckpt.state_tensors(lin)
    assert set(state) == {"weight", "bias"} and not state["weight"].requires_grad and state["weight"].is_contiguous()
