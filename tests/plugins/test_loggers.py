"""Loggers (train.loggers): jsonl records carry split and time, tensorboard event files read back
with TensorBoard's own reader, csv, and the recipe errors of the list."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from parallax.cli.main import main
from parallax.errors import ConfigError, PluginError
from parallax.recipe import load_recipe


def records(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_jsonl_is_the_default_and_records_carry_split_and_time(tiny_recipe, tmp_path):
    assert [spec.type for spec in load_recipe(str(tiny_recipe)).train.loggers] == ["jsonl"]
    assert main(["run", str(tiny_recipe)]) == 0
    recs = records(tmp_path / "run")
    assert [r["split"] for r in recs if "loss" in r] == ["train"] * 6
    assert [r["split"] for r in recs if "val_loss" in r] == ["val", "val"]
    times = [r["time"] for r in recs]
    assert all(t >= 0 for t in times) and times == sorted(times)


def test_a_resumed_run_counts_time_on_from_its_checkpoint(tiny_recipe, tmp_path):
    assert main(["run", str(tiny_recipe), "train.max_steps=4", "train.save_every=4"]) == 0
    before = {r["step"]: r["time"] for r in records(tmp_path / "run") if r["split"] == "train"}
    assert main(["run", str(tiny_recipe), "train.max_steps=6", "train.resume=auto"]) == 0
    after = [r for r in records(tmp_path / "run") if r["split"] == "train"]
    assert [r["step"] for r in after] == [1, 2, 3, 4, 5, 6]
    assert after[4]["time"] >= before[4]


def test_tensorboard_event_file_reads_back_with_the_logged_losses(tiny_recipe, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["run", str(tiny_recipe), "train.loggers=[jsonl,tensorboard]"]) == 0
    run = tmp_path / "run"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    logged = [r for r in records(run) if r["split"] == "train"]
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [r["step"] for r in logged]
    assert [e.value for e in events] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    val = acc.Scalars("val/loss")
    assert [e.step for e in val] == [3, 6]
    assert "recipe" in "".join(acc.Tags()["tensors"])  # the recipe as text


def test_csv_logger_writes_rows_hparams_and_summary(tiny_recipe, tmp_path):
    assert main(["run", str(tiny_recipe), "train.loggers=csv"]) == 0
    run = tmp_path / "run"
    assert not (run / "metrics.jsonl").exists()  # only the loggers listed write
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows].count("train") == 6 and [r["split"] for r in rows].count("val") == 2
    assert {"step", "split", "time", "loss", "val_loss"} <= set(rows[0])
    assert rows[-1]["val_loss"] and not rows[0]["val_loss"]
    hparams = dict(csv.reader(open(run / "hparams.csv")))
    assert hparams["train.max_steps"] == "6" and hparams["model.type"] == "cws"
    summary = dict(csv.reader(open(run / "summary.csv")))
    assert summary["step"] == "6" and float(summary["val_loss"]) > 0


def test_logger_options_and_unknown_names_are_recipe_errors(tiny_recipe):
    cfg = load_recipe(str(tiny_recipe), ["train.loggers=[{type: csv, file: log.csv}, jsonl]"])
    assert [(s.type, getattr(s, "file", None)) for s in cfg.train.loggers] == [("csv", "log.csv"), ("jsonl", None)]
    with pytest.raises(PluginError, match=r"train\.loggers\.1\.type: unknown logger 'tensorbord'; did you mean "
                                          r"'tensorboard'\? \(registered: csv, jsonl, tensorboard\)"):
        load_recipe(str(tiny_recipe), ["train.loggers=[jsonl,tensorbord]"])
    with pytest.raises(ConfigError, match=r"train\.loggers\.0\.flush: unknown key"):
        load_recipe(str(tiny_recipe), ["train.loggers=[{type: jsonl, flush: 1}]"])
