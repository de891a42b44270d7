"""README's two commands are the ones CI runs: `.ci/run` reads them from README.md's `ci:` blocks."""
from __future__ import annotations

import subprocess
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def _readme_command(marker: str) -> str:
    """The command `.ci/run` extracts for ``marker``, by running its own extraction function."""
    script = f'source <(sed -n "/^readme_command()/,/^}}/p" .ci/run); readme_command {marker}'
    return subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def test_ci_runs_the_readme_install_and_test_commands():
    install, tests = _readme_command("install"), _readme_command("test")
    assert install == 'pip install torch==2.13.0 && pip install -e ".[test]"'
    assert tests == "python -m pytest -q"
    ci = (REPO / ".ci" / "run").read_text()
    assert 'bash -c "$install"' in ci and 'bash -c "$tests"' in ci
    assert "pip install -e" not in ci.replace("readme", "")  # no install of its own beside the README's


def test_the_test_extra_installs_what_the_tests_import():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {req.split(">")[0].split("=")[0].split("[")[0].strip() for req in extras["test"]}
    assert {"pytest", "triton", "datasets", "tokenizers", "scikit-learn"} <= names
