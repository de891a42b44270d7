"""Training records carry the global gradient norm before clipping (``grad_norm``) when clipping is on."""
from __future__ import annotations

import json

from parallax.testing import train, write_tiny_recipe


def test_grad_norm_is_logged_before_clipping(tmp_path):
    recipe = write_tiny_recipe(tmp_path / "t.yaml", tmp_path / "o")
    train(recipe, tmp_path / "a", "train.grad_clip=1e-6", steps=3)
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    norms = [r["grad_norm"] for r in records if "loss" in r]
    assert len(norms) == 3 and all(n > 1e-6 for n in norms)  # the norm before clipping, not the clipped one
    train(recipe, tmp_path / "b", "train.grad_clip=null", steps=2)
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert not any("grad_norm" in r for r in records)
