"""Shared fixtures. The project's own tests use ``parallax.testing`` exactly as a plugin author's do:
its ``tiny_recipe`` (a CWS that trains in well under a second per step on 2 CPU cores),
``make_tiny_recipe`` and ``register_plugin``. ``pytester`` runs pytest on generated test files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels run on the CPU through Triton's interpreter; it must be chosen before the kernels
# are decorated, so before any test module imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = ["parallax.testing", "pytester"]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def pip_install():
    """``pip_install(package_dir, root) -> site``: pip builds the plugin package and installs it into
    the folder ``root / "site"`` (not into this interpreter). Put ``site`` on sys.path or PYTHONPATH
    and Parallax finds the plugin by its entry point, as it finds any installed plugin."""

    def install(package: Path, root: Path) -> Path:
        source = shutil.copytree(package, root / "source")  # pip builds in place; keep the checkout clean
        site = root / "site"
        base = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site)]
        offline = subprocess.run([*base, "--no-build-isolation", "--no-index", str(source)], capture_output=True)
        if offline.returncode != 0:
            # This interpreter's setuptools cannot build a wheel by itself (before 70.1 it needs the
            # wheel package), so let pip fetch a build backend from the package index.
            subprocess.run([*base, str(source)], check=True)
        return site

    return install
