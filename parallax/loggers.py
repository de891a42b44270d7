"""Loggers: the ``loggers`` registry kind, chosen by ``train.loggers: [jsonl, tensorboard]``.

A logger is a ``Callback`` with a ``Config``: the trainer builds one per name in ``train.loggers``
(on rank 0 only) and runs it with the other callbacks. ``Logger`` turns the trainer's events into
three calls that a logger implements:

- ``start(trainer, hparams)`` once the model is built: ``hparams`` is the resolved recipe (a nested dict);
- ``write(trainer, record)`` for every training record and every evaluation. Each record carries
  ``step``, ``split`` ("train" or "val") and ``time`` (seconds since the run started, counted
  across resumes by the loggers that can read their own history);
- ``finish(trainer, summary)`` with the run's final summary (summary.json).

``flush()`` runs after every checkpoint, so that an interrupted run's logs reach the disk with its
last checkpoint.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from .callbacks import Callback
from .schema import Spec

if TYPE_CHECKING:
    from .trainer import Trainer


class Logger(Callback):
    Config: ClassVar[type[Spec]]

    def __init__(self, cfg: Spec):
        self.cfg = cfg
        self.t0 = time.time()

    # -- what a logger implements ---------------------------------------------------------------
    def start(self, trainer: Trainer, hparams: dict) -> None:
        """The run starts (or resumes at ``trainer.step``); ``hparams`` is the resolved recipe."""

    def write(self, trainer: Trainer, record: dict) -> None:
        """One record: ``step``, ``split``, ``time`` and the metrics."""
        raise NotImplementedError

    def finish(self, trainer: Trainer, summary: dict) -> None:
        """The run ended with ``summary``."""

    def flush(self) -> None:
        """Push buffered records to disk."""

    def resumed_seconds(self, trainer: Trainer) -> float:
        """The ``time`` the run had reached when it was resumed (0 for a fresh run)."""
        return 0.0

    # -- the trainer's events -------------------------------------------------------------------
    def on_setup(self, trainer: Trainer) -> None:
        hparams = trainer.recipe.model_dump(mode="json", serialize_as_any=True)
        self.start(trainer, hparams)
        self.t0 = time.time() - self.resumed_seconds(trainer)

    def on_log(self, trainer: Trainer, record: dict) -> None:
        self.write(trainer, self._stamp(record, "train"))

    def on_eval(self, trainer: Trainer, result: dict) -> None:
        self.write(trainer, self._stamp(result, "val"))

    def on_save(self, trainer: Trainer, path) -> None:
        self.flush()

    def on_end(self, trainer: Trainer, summary: dict) -> None:
        self.finish(trainer, summary)
        self.flush()

    def _stamp(self, record: dict, split: str) -> dict:
        rest = {k: v for k, v in record.items() if k != "step"}
        return {"step": record["step"], "split": split, "time": round(time.time() - self.t0, 3), **rest}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"optimizer": {"lr": 3e-3}}}`` -> ``{"train.optimizer.lr": 3e-3}`` (list items by index)."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def build_loggers(specs: list[Spec], registry) -> list[Logger]:
    """One logger per validated ``train.loggers`` entry."""
    return [registry.get("loggers", spec.type, where=f"train.loggers.{i}.type")(spec) for i, spec in enumerate(specs)]
