"""examples/signal_experts, the external plugin package, through the real entry-point path.

pip builds and installs the package into a private folder that is put on sys.path for this module
only (the ``pip_install`` fixture), so Parallax finds it exactly as it finds any installed plugin:
by its dist-info entry point. Nothing is installed into the interpreter running the suite.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parallax.checkpoint import read_metadata
from parallax.cli.main import main
from parallax.registry import get_registry
from parallax.testing import assert_expert_conforms

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "signal_experts"
RECIPE = EXAMPLE / "recipes" / "signal.yaml"
SMALL = ["data.val_size=16", "train.batch_size=4", "train.progress=false", "train.threads=1"]


@pytest.fixture(scope="module")
def site(tmp_path_factory, pip_install):
    """A folder holding the installed package and its dist-info, on sys.path while this module runs."""
    target = pip_install(EXAMPLE, tmp_path_factory.mktemp("signal_experts"))
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    get_registry(refresh=True)
    yield target
    sys.path.remove(str(target))
    for mod in [m for m in sys.modules if m.startswith("parallax_signal_experts")]:
        del sys.modules[mod]
    get_registry(refresh=True)


@pytest.fixture(scope="module")
def trained(site, tmp_path_factory):
    """A three-step run of the example's recipe through `parallax run`, and what it printed."""
    out_dir = tmp_path_factory.mktemp("signal_run") / "run"
    capture = tmp_path_factory.mktemp("signal_log") / "stderr.txt"
    with open(capture, "w") as log:
        saved, sys.stderr = sys.stderr, log
        try:
            rc = main(["run", str(RECIPE), "train.max_steps=3", f"out_dir={out_dir}", *SMALL])
        finally:
            sys.stderr = saved
    return rc, out_dir, capture.read_text()


def test_parallax_plugins_json_lists_it(site, capsys):
    assert main(["plugins", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "signal_experts")
    assert row == {"name": "signal_experts", "version": "0.1.0", "dist": "parallax-signal-experts", "builtin": False,
                   "provides": {"experts": ["causal_conv", "fourier_features"]}, "hooks": ["register_experts"],
                   "error": None}


@pytest.mark.parametrize("name", ["causal_conv", "fourier_features"])
def test_its_experts_conform(site, name):
    assert_expert_conforms(name)


def test_its_recipe_trains_and_the_run_names_the_plugin(trained):
    rc, out_dir, log = trained
    assert rc == 0
    header = next(line for line in log.splitlines() if line.startswith("parallax run:"))
    assert "plugins: parallax-cws==0.1.0, parallax-signal-experts==0.1.0;" in header
    meta = read_metadata(out_dir / "step-00000003")
    assert json.loads(meta["components"])["experts/causal_conv"] == "parallax-signal-experts==0.1.0"
    assert json.loads(meta["plugins"])["signal_experts"] == "0.1.0"


def test_without_the_package_its_checkpoint_names_what_to_install(trained, capsys, monkeypatch):
    _, out_dir, _ = trained
    ckpt = out_dir / "step-00000003"
    from parallax import registry as regmod

    real = regmod.entry_points
    monkeypatch.setattr(regmod, "entry_points",  # as if the package were not installed
                        lambda group: [ep for ep in real(group=group) if ep.name != "signal_experts"])
    get_registry(refresh=True)
    try:
        rc = main(["run", str(ckpt / "config.yaml"), f"train.resume={ckpt}", "train.max_steps=4"])
    finally:
        monkeypatch.setattr(regmod, "entry_points", real)
        get_registry(refresh=True)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "needs expert 'causal_conv' from parallax-signal-experts==0.1.0" in err
    assert err.endswith("pip install parallax-signal-experts")


def test_when_kept_out_by_the_deny_list_its_checkpoint_says_so(trained, capsys, monkeypatch):
    _, out_dir, _ = trained
    ckpt = out_dir / "step-00000003"
    monkeypatch.setenv("PARALLAX_DISABLE_PLUGINS", "signal_experts")
    get_registry(refresh=True)
    try:
        rc = main(["run", str(ckpt / "config.yaml"), f"train.resume={ckpt}", "train.max_steps=4"])
    finally:
        monkeypatch.delenv("PARALLAX_DISABLE_PLUGINS")
        get_registry(refresh=True)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "installed but plugin 'signal_experts' is kept out by PARALLAX_DISABLE_PLUGINS" in err


def test_the_allow_list_can_leave_it_out(site, monkeypatch, capsys):
    monkeypatch.setenv("PARALLAX_LOAD_PLUGINS", "")
    try:
        names = get_registry(refresh=True).names("experts")
    finally:
        monkeypatch.delenv("PARALLAX_LOAD_PLUGINS")
        get_registry(refresh=True)
    assert "causal_conv" not in names and "mamba_siso" in names


def test_the_example_passes_its_own_tests(site):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE)],
                            capture_output=True, text=True, env=env, cwd=site)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "13 passed" in result.stdout
