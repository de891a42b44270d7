"""FSDP2 under torchrun on CPU gloo: the same losses as one process, a checkpoint any world size loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parallax.cli.main import main
from parallax.recipe import load_recipe
from parallax.trainer import Trainer
from parallax_plugins.data.recall import RecallData

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "recall.yaml"
SHORT = ["train.max_steps=20", "train.log_every=1", "train.eval_every=100", "train.save_every=20",
         "train.batch_size=8", "train.progress=false", "train.device=cpu", "~train.max_minutes"]


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
def test_fsdp_on_two_ranks_matches_one_process_and_its_checkpoint_loads_anywhere(tmp_path, monkeypatch, capsys):
    out = tmp_path / "fsdp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
           "-m", "parallax", "run", str(RECIPE), f"out_dir={out}", "train.distributed=fsdp", *SHORT]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 20

    # One process on the global batch, each step's two rank batches side by side: the same
    # optimisation problem, so the same losses (the logged loss is the mean over the ranks)
    real = RecallData.batch

    def global_batch(self, step, rank=0):
        a, b = real(self, step, 0), real(self, step, 1)
        return {k: torch.cat([a[k], b[k]]) for k in a}

    monkeypatch.setattr(RecallData, "batch", global_batch)
    torch.set_num_threads(1)
    Trainer(load_recipe(str(RECIPE), [f"out_dir={tmp_path / 'one'}", *SHORT])).fit()
    monkeypatch.undo()
    sharded, single = losses(out), losses(tmp_path / "one")
    assert len(sharded) == len(single) == 20
    assert max(abs(a - b) for a, b in zip(sharded, single)) < 1e-3, (sharded, single)
    assert sharded[-1] < sharded[0]  # it trains

    # the checkpoint holds the full state: one process evaluates it (the same figures as the
    # two ranks' sharded evaluation) and resumes from it
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    assert alone["val_accuracy"] == pytest.approx(summary["val_accuracy"], abs=1e-9)
    assert main(["run", str(RECIPE), f"out_dir={out}", *SHORT, "train.max_steps=22", "train.resume=auto"]) == 0
    assert json.loads((out / "summary.json").read_text())["step"] == 22
    # and the single process's checkpoint back on two FSDP ranks: each keeps its shard of the full
    # optimizer state, and no option is reported changed (saved betas are a list, the recipe's a tuple)
    again = subprocess.run([*cmd[:-len(SHORT)], *SHORT, "train.max_steps=24", "train.resume=auto"],
                           capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr and "replaces the checkpoint's" not in again.stderr
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["step"] == 24 and resumed["world_size"] == 2


def test_fsdp_refuses_what_it_cannot_shard(capsys):
    assert main(["run", str(RECIPE), "train.distributed=fsdp", "train.ema=0.999"]) != 0
    assert "train: ema is not supported with distributed: fsdp; use distributed: ddp or set ema: null" in \
        capsys.readouterr().err
    assert main(["run", str(RECIPE), "train.distributed=fsdp", "train.optimizer.type=muon"]) != 0
    assert "optimizer muon is not supported with distributed: fsdp" in capsys.readouterr().err
