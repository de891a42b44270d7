"""What a run shows while it runs: which K the bar reports, and tokens/s without evaluation time."""
from __future__ import annotations

import io
import time

from rich.console import Console

from parallax.metrics import read_records
from parallax.progress import TrainingProgress, describe
from parallax.recipe import load_recipe
from parallax.trainer import Trainer


def test_the_line_says_the_k_it_shows_is_the_training_budget():
    rec = {"loss": 1.5, "tokens_per_s": 1234.0, "k_mean": 2.5, "lr": 1e-3}
    assert "K(train budget) 2.50" in describe(rec)
    buf = io.StringIO()
    with TrainingProgress(Console(file=buf, force_terminal=False), 10, 0, True) as bar:
        bar.update(5, rec)
    line = buf.getvalue()
    assert line.startswith("step 5/10") and "K(train budget) 2.50" in line and "eta" in line


def test_tokens_per_s_leaves_out_evaluation_time(tiny_recipe, monkeypatch):
    def slow_eval(self):
        time.sleep(1.0)  # an evaluation far slower than a tiny training step
        return {"step": self.step}

    monkeypatch.setattr(Trainer, "_eval", slow_eval)
    recipe = load_recipe(str(tiny_recipe), ["train.max_steps=6", "train.log_every=2", "train.eval_every=2"])
    trainer = Trainer(recipe, console=Console(file=io.StringIO()))
    trainer.fit()
    recs = [r for r in read_records(trainer.out_dir) if "tokens_per_s" in r]
    tokens_per_step = recipe.train.batch_size * trainer.data.batch(0)["inputs"][0].numel()
    seconds = [2 * tokens_per_step / r["tokens_per_s"] for r in recs]  # each window's two steps
    assert len(seconds) == 3 and max(seconds) < 0.9, seconds  # a 1 s evaluation sat inside windows 2 and 3
