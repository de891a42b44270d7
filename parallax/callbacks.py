"""Trainer events, for benchmarks, loggers and user code that watch a run without patching the trainer.

Subclass ``Callback`` and override the events you need; pass instances as ``Trainer(..., callbacks=[...])``.
Every event receives the trainer, so a callback reads what it needs (``trainer.model``, ``trainer.step``,
``trainer.device``, ``trainer.out_dir``). Events run on every rank; check ``trainer.is_main`` to act once.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from .trainer import Trainer


class Callback:
    def on_setup(self, trainer: Trainer) -> None:
        """Data, model, optimizer and schedule are built, and a resumed run's state is restored."""

    def on_step(self, trainer: Trainer, loss: float) -> None:
        """One optimizer step is done (``trainer.step`` counts it); ``loss`` is its training loss."""

    def on_log(self, trainer: Trainer, record: dict) -> None:
        """A training record (step, loss, tokens_per_s, k_mean, lr, diagnostics) was logged."""

    def on_eval(self, trainer: Trainer, result: dict) -> None:
        """A validation pass finished; ``result`` is the record written to metrics.jsonl."""

    def on_save(self, trainer: Trainer, path: Path) -> None:
        """A checkpoint was written to ``path``."""

    def on_end(self, trainer: Trainer, summary: dict) -> None:
        """The run finished (max_steps or max_minutes) and wrote ``summary``."""
