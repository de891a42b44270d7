"""``parallax bench ablation`` and the diagnostics hook, on a tiny run with a memory bank."""
from __future__ import annotations

import json

from parallax.cli.main import main
from parallax.diagnostics import collect
from parallax.testing import train


def test_bank_diagnostics_reach_metrics_and_the_ablation_json(make_tiny_recipe, tmp_path, capsys):
    path = make_tiny_recipe(experts=[{"type": "attention_probe", "slots": 1, "heads": 2},
                                     {"type": "memory_bank", "slots": 1, "entries": 8}])
    run = tmp_path / "run"
    summary = train(path, run, steps=4)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "loss" in r]
    eval_recs = [r for r in records if "val_loss" in r]
    for rec in train_recs + eval_recs:
        assert -1 <= rec["experts.1.bank_cosine"] <= 1
        assert 0 < rec["experts.1.bank_entropy"] <= 1
    assert "experts.1.bank_cosine" in summary

    assert main(["bench", "ablation", str(run), "--fractions", "0", "0.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["base"]["experts.1.bank_cosine"] == summary["experts.1.bank_cosine"]
    rows = {r["fraction"]: r for r in result["rows"]}
    assert [r["module"] for r in result["rows"]] == ["experts.1", "experts.1"]
    assert rows[0.0]["dropped"] == 0 and abs(rows[0.0]["delta_val_loss"]) < 1e-6  # nothing dropped: no change
    assert rows[0.5]["dropped"] == 4
    assert rows[0.5]["delta_val_loss"] == rows[0.5]["val_loss"] - result["base"]["val_loss"] != 0


def test_ablation_errors_are_one_line(tiny_recipe, tmp_path, capsys):
    assert main(["bench", "ablation", str(tmp_path)]) == 2
    assert "holds no checkpoint (step-XXXXXXXX/)" in capsys.readouterr().err
    train(tiny_recipe, tmp_path / "run", steps=1)
    assert main(["bench", "ablation", str(tmp_path / "run")]) == 2
    assert "no component of this model supports ablation" in capsys.readouterr().err
    step = next((tmp_path / "run").glob("step-*"))  # one checkpoint folder is accepted as well
    assert main(["bench", "ablation", str(step)]) == 2
    assert "no component of this model supports ablation" in capsys.readouterr().err
    assert main(["bench", "ablation", str(tmp_path / "run"), "--fractions", "1.5"]) == 2
    assert "--fractions" in capsys.readouterr().err


def test_collect_prefixes_each_module_path():
    import torch

    class Reports(torch.nn.Module):
        def diagnostics(self):
            return {"x": 1.0, "bad": float("nan")}

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), Reports())
    assert collect(model) == {"1.x": 1.0, "1.bad": None}
