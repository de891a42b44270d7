"""What a training run shows while it runs: a rich progress bar on a terminal, plain log lines elsewhere.

On a terminal the bar shows the step, elapsed time, ETA and the last training record. When the
console is not a terminal (a log file, nohup, a job scheduler, CI) the bar is off, and each logged
record becomes one plain line instead, so a log shows the loss as the run goes:

    step 250/5000  loss 2.1043  9,812 tok/s  K(train budget) 5.20  lr 2.99e-03  elapsed 0:01:02  eta 0:19:40

``K(train budget)`` is the mean K of the training batches, under the training K schedule (a ramp
starts at 1); evaluation lines report the settled K at k_max as ``val_k_mean``.
"""
from __future__ import annotations

import time
from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def describe(rec: dict) -> str:
    k = f"  K(train budget) {rec['k_mean']:.2f}" if rec.get("k_mean") is not None else ""
    rate = f"{rec['tokens_per_s']:,.0f} tok/s" if rec.get("tokens_per_s") else "compiling"
    return f"loss {rec['loss']:.4f}  {rate}{k}  lr {rec['lr']:.2e}"


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


class TrainingProgress:
    """``with TrainingProgress(console, total, start, show) as p: p.update(step, record or None)``."""

    def __init__(self, console: Console, total: int, start: int, show: bool, bar: bool = True):
        self.console, self.total, self.start, self.show = console, total, start, show
        self.t0 = time.time()
        self.bar = show and bar and console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
            disable=not self.bar,
        )
        self._task = None

    def __enter__(self) -> TrainingProgress:
        self._progress.__enter__()
        self._task = self._progress.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def update(self, step: int, record: dict | None = None) -> None:
        if record is None:
            self._progress.update(self._task, completed=step)
            return
        self._progress.update(self._task, completed=step, info=describe(record))
        if self.show and not self.bar:
            elapsed = time.time() - self.t0
            done = step - self.start
            eta = elapsed / done * (self.total - step) if done > 0 else 0.0
            self.console.print(f"step {step}/{self.total}  {describe(record)}  elapsed {_clock(elapsed)}  "
                               f"eta {_clock(eta)}", highlight=False, soft_wrap=True)
