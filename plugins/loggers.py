"""Loggers: ``jsonl`` (metrics.jsonl, the default), ``tensorboard`` (event files) and ``csv`` (metrics.csv).

Each gets the resolved recipe as hyperparameters when the run starts and the final summary when
it ends. A resumed run first drops what the interrupted run logged past its checkpoint, so each
log reads as one run.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from pydantic import Field

import parallax
from parallax.loggers import Logger, flatten
from parallax.metrics import MetricsFile, read_records
from parallax.rundir import set_aside


def keep_earlier(trainer, path: Path) -> None:
    """A fresh run keeps what an earlier run logged at ``path`` (renamed aside, with a note), never deletes it."""
    if trainer.resume_from is None:
        aside = set_aside(path)
        if aside is not None:
            trainer.console.print(f"note: {trainer.out_dir} held an earlier run's {path.name} and no checkpoint; "
                                  f"kept it as {aside.name}")


class JsonlLogger(Logger):
    """``out_dir/metrics.jsonl``: one JSON object per record, training records and evaluations in one file."""

    class Config(parallax.Spec):
        type: str = "jsonl"

    def start(self, trainer, hparams):
        self.file = MetricsFile(trainer.out_dir)
        keep_earlier(trainer, self.file.path)
        torn = self.file.trim(trainer.step)  # records the interrupted run logged past its checkpoint
        if torn:
            trainer.console.print(f"note: dropped {torn} unreadable line{'s' * (torn > 1)} from {self.file.path} "
                                  f"(a run stopped while writing it)")

    def resumed_seconds(self, trainer):
        if trainer.step == 0 or not self.file.path.exists():
            return 0.0
        times = [r["time"] for r in read_records(self.file.path) if isinstance(r.get("time"), (int, float))]
        return float(times[-1]) if times else 0.0

    def write(self, trainer, record):
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
        self.file.append(record)


class TensorBoardLogger(Logger):
    """TensorBoard event files (torch's ``SummaryWriter``): scalars ``train/loss``, ``val/loss``...,
    the recipe as text, and the recipe's hyperparameters with the summary's metrics (HParams tab)."""

    class Config(parallax.Spec):
        type: str = "tensorboard"
        log_dir: str | None = Field(None, description="event-file folder; null: OUT_DIR/tensorboard")
        flush_secs: float = Field(10.0, gt=0, description="seconds between writes to disk")

    def start(self, trainer, hparams):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise parallax.ConfigError("train.loggers: tensorboard needs the tensorboard package; "
                                       "pip install 'parallax-cws[tensorboard]', or drop tensorboard") from None
        self.dir = Path(self.cfg.log_dir) if self.cfg.log_dir else trainer.out_dir / "tensorboard"
        self.hparams = hparams
        # purge_step: a resumed run drops the events the interrupted run wrote past its checkpoint
        self.writer = SummaryWriter(str(self.dir), flush_secs=self.cfg.flush_secs,
                                    purge_step=trainer.step + 1 if trainer.step else None)
        if trainer.step == 0:
            from parallax.recipe import dump_recipe

            self.writer.add_text("recipe", "```yaml\n" + dump_recipe(trainer.recipe) + "\n```", 0)

    def write(self, trainer, record):
        split = record["split"]
        for key, value in record.items():
            if key in ("step", "split") or not _scalar(value):
                continue
            name = key[4:] if split == "val" and key.startswith("val_") else key
            self.writer.add_scalar(f"{split}/{name}", value, record["step"])

    def finish(self, trainer, summary):
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                   for k, v in flatten(self.hparams).items()}
        metrics = {f"summary/{k}": v for k, v in summary.items() if _scalar(v) and k != "step"}
        self.writer.add_hparams(hparams, metrics or {"summary/step": summary.get("step", 0)}, run_name="hparams",
                                global_step=summary.get("step"))

    def flush(self):
        if hasattr(self, "writer"):
            self.writer.flush()


class CsvLogger(Logger):
    """``out_dir/metrics.csv``: one row per record, a column per key (``split`` tells train from val
    rows); the recipe flattened into ``hparams.csv`` and the summary into ``summary.csv``."""

    class Config(parallax.Spec):
        type: str = "csv"
        file: str = Field("metrics.csv", description="file name inside out_dir")

    def start(self, trainer, hparams):
        self.path = trainer.out_dir / self.cfg.file
        self.out_dir = trainer.out_dir
        self.rows: list[dict] = []
        keep_earlier(trainer, self.path)
        if trainer.step and self.path.exists():  # a resume keeps the rows up to its checkpoint
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if _int(r.get("step")) <= trainer.step]
        self.columns = list(dict.fromkeys(k for r in self.rows for k in r))
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
        self._rewrite()
        _write_pairs(trainer.out_dir / "hparams.csv", flatten(hparams))

    def resumed_seconds(self, trainer):
        times = [float(r["time"]) for r in self.rows if r.get("time")]
        return times[-1] if times else 0.0

    def write(self, trainer, record):
        row = {k: "" if v is None else v for k, v in record.items() if _scalar(v) or v is None or isinstance(v, str)}
        self.rows.append(row)
        if any(k not in self.columns for k in row):  # a new key: the header grows, the file is rewritten
            self.columns += [k for k in row if k not in self.columns]
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def finish(self, trainer, summary):
        _write_pairs(self.out_dir / "summary.csv", flatten(summary))

    def _rewrite(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.columns, restval="")
        if self.columns:
            w.writeheader()
            w.writerows(self.rows)
        self.path.write_text(buf.getvalue())


def _scalar(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(text) -> int:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return 0


def _write_pairs(path: Path, pairs: dict) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "value"])
        w.writerows((k, "" if v is None else v) for k, v in pairs.items())


@parallax.hookimpl
def register_loggers(register):
    register("jsonl", JsonlLogger)
    register("tensorboard", TensorBoardLogger)
    register("csv", CsvLogger)
