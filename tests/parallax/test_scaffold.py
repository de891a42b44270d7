"""`parallax new-plugin`: the package it writes works as it is, for every kind.

The fast tests import the generated package in-process and register it with ``registered``; the
slow one installs it with pip and runs its tests, `parallax plugins` and `parallax run` in fresh
processes, as a plugin author does.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parallax.cli.main import main
from parallax.scaffold import KINDS, files_for
from parallax.testing import (
    assert_decoder_conforms,
    assert_encoder_conforms,
    assert_expert_conforms,
    assert_workspace_conforms,
    registered,
    train,
)

CHECK = {"expert": assert_expert_conforms, "encoder": assert_encoder_conforms,
         "decoder": assert_decoder_conforms, "workspace": assert_workspace_conforms}


def scaffold(capsys, dest: Path, name: str, kind: str) -> str:
    assert main(["new-plugin", name, "--kind", kind, "--dest", str(dest)]) == 0
    return capsys.readouterr().out


@pytest.fixture
def imported(monkeypatch):
    """Import a generated package from its src/ folder; forget it afterwards."""
    def load(dest: Path, package: str):
        monkeypatch.syspath_prepend(str(dest / "src"))
        importlib.invalidate_caches()
        return importlib.import_module(package)

    yield load
    for mod in [m for m in sys.modules if m.startswith("parallax_scaffolded_")]:
        del sys.modules[mod]


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_generated_component_conforms_and_its_recipe_trains(kind, tmp_path, capsys, imported):
    name = f"scaffolded_{kind}"
    out = scaffold(capsys, tmp_path / "pkg", name, kind)
    assert f"pip install -e {tmp_path / 'pkg'} && pytest {tmp_path / 'pkg'}" in out
    module = imported(tmp_path / "pkg", f"parallax_{name}")
    with registered(module, name) as info:
        assert info.provides == {KINDS[kind][0]: [name]}
        CHECK[kind](name)
        summary = train(tmp_path / "pkg" / "recipes" / f"{name}.yaml", tmp_path / "run", "data.val_size=16", steps=2)
    assert summary["step"] == 2


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_file_is_rendered_and_the_python_compiles(kind):
    files = files_for("my_thing", kind)
    assert set(files) == {"pyproject.toml", "README.md", "src/parallax_my_thing/__init__.py",
                          f"src/parallax_my_thing/{kind}.py", "tests/conftest.py", "tests/test_my_thing.py",
                          "recipes/my_thing.yaml"}
    for path, text in files.items():
        assert "$" not in text and "TODO" not in text, path
        if path.endswith(".py"):
            compile(text, path, "exec")
    assert 'my_thing = "parallax_my_thing"' in files["pyproject.toml"]
    assert 'name = "parallax-my-thing"' in files["pyproject.toml"]
    assert files["recipes/my_thing.yaml"].startswith("# parallax run recipes/my_thing.yaml")
    assert 'pytest_plugins = ["parallax.testing"]' in files["tests/conftest.py"]


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["new-plugin", "My-Expert"], "'My-Expert' is not a valid plugin name"),
        (["new-plugin", "mamba_siso"], "expert 'mamba_siso' is already registered by plugin 'builtin-experts'"),
        (["new-plugin", "builtin-experts", "--kind", "encoder"], "not a valid plugin name"),
        (["new-plugin", "cws", "--kind", "workspace"], "workspace 'cws' is already registered"),
        (["new-plugin", "x", "--kind", "halting"], "invalid choice: 'halting'"),
        (["new-plugn", "x"], "did you mean `parallax new-plugin`?"),
    ],
)
def test_bad_arguments_are_one_line_errors(capsys, tmp_path, argv, needle):
    rc, err = run_cli(capsys, *argv, "--dest", str(tmp_path / "new"))
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists()


def test_refuses_to_write_into_a_directory_that_is_not_empty(capsys, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    rc, err = run_cli(capsys, "new-plugin", "my_expert", "--dest", str(tmp_path))
    assert rc == 2 and "already exists and is not an empty directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@pytest.mark.slow
def test_pip_install_then_pytest_passes_and_parallax_lists_and_runs_it(tmp_path, capsys, pip_install):
    """The author's path: new-plugin, pip install, pytest DIR, parallax plugins, parallax run."""
    dest = tmp_path / "my_expert"
    scaffold(capsys, dest, "my_expert", "expert")
    site = pip_install(dest, tmp_path / "install")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}

    def run(*argv, cwd=tmp_path):
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=cwd)

    tests = run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(dest))
    assert tests.returncode == 0 and "4 passed" in tests.stdout, tests.stdout + tests.stderr

    listed = run("-m", "parallax", "plugins", "--json")
    row = next(r for r in json.loads(listed.stdout) if r["name"] == "my_expert")
    assert row == {"name": "my_expert", "version": "0.1.0", "dist": "parallax-my-expert", "builtin": False,
                   "provides": {"experts": ["my_expert"]}, "hooks": ["register_experts"], "error": None}

    trained = run("-m", "parallax", "run", "recipes/my_expert.yaml", "train.max_steps=5", f"out_dir={tmp_path / 'run'}",
                  cwd=dest)
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["step"] == 5
    assert "plugins: parallax-cws==0.1.0, parallax-my-expert==0.1.0;" in trained.stderr
