"""Shared fixtures: a tiny CWS recipe that trains in well under a second per step on 2 CPU cores."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = """\
seed: 0
out_dir: {out_dir}
model:
  type: cws
  d_model: 16
  k_max: 4
  live_steps: 1
  halting: {{type: momentum, rel_tol: 0.05, abs_tol: 0.001, k_min: 2}}
  encoder: {{type: token, window: 2}}
  experts:
    - {{type: mamba_siso, slots: 2, d_state: 4}}
    - {{type: attention_probe, slots: 1, heads: 2}}
    - {{type: mlp_probe, slots: 1, hidden: 16}}
    - {{type: siren, slots: 1, hidden: 8}}
  workspace: {{type: cws, heads: 2}}
  decoder: {{type: motor, layers: 2, context: 4, heads: 2, mlp_ratio: 2}}
data: {{type: recall, n_keys: 8, n_values: 8, n_pairs: 3, n_queries: 2, val_size: 16}}
train:
  max_steps: 6
  batch_size: 4
  eval_every: 3
  log_every: 1
  save_every: 3
  threads: 1
  progress: false
  optimizer: {{type: adamw, lr: 0.003}}
  schedule: {{warmup_steps: 2}}
"""


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """Path to a tiny, valid recipe whose out_dir is inside tmp_path."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(out_dir=tmp_path / "run"))
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
