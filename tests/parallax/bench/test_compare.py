"""``parallax bench compare``: recipes trained side by side under one budget, parameters matched, bad input in
one line."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from parallax import DataInfo
from parallax.bench import compare
from parallax.cli.main import main
from parallax.recipe import load_recipe
from parallax.registry import get_registry
from parallax.testing import tiny_recipe_data
from parallax_plugins.baselines.transformer import Transformer

TINY_TRANSFORMER = {"type": "transformer", "n_layer": 1, "n_head": 2, "n_kv_heads": 1, "n_embd": 16}


@pytest.fixture
def pair(tmp_path):
    """(tiny CWS recipe, tiny transformer recipe) on the same recall data; their own out_dirs are never used."""
    paths = []
    for name, model in (("cws", None), ("tf", TINY_TRANSFORMER)):
        data = tiny_recipe_data(tmp_path / f"own_{name}")
        if model:
            data["model"] = model
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"# parallax run {path.name}\n" + yaml.safe_dump(data, sort_keys=False))
        paths.append(path)
    return paths


def test_trains_each_recipe_and_reports_the_same_budget(pair, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["bench", "compare", *map(str, pair), "--steps", "3", "--out", str(out), "--json"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["budget"] == {"steps": 3} and result["device"] == "cpu"
    cws, tf = result["runs"]
    assert (cws["model"], tf["model"]) == ("cws", "transformer")
    for row, path in zip((cws, tf), pair):
        assert row["steps"] == 3 and row["stop"] == "max_steps"
        recipe = load_recipe(str(path))
        with torch.device("meta"):
            from parallax.model import build_model
            model = build_model(recipe.model, DataInfo(vocab_size=16), get_registry())
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["embedding"] + row["non_embedding"] == row["params"] and row["embedding"] > 0
        assert row["tokens_per_s"] > 0 and row["tokens_per_s_median"] > 0 and row["saved_bytes"] > 0
        assert row["memory"] == "cpu_peak_rss_growth" and row["peak_bytes"] is not None
        assert 0 <= row["val_accuracy"] <= 1 and row["val_loss"] > 0
        # the run went under --out, and the recipe's own out_dir was left alone
        assert (out / path.stem / "summary.json").is_file() and not (tmp_path / f"own_{path.stem}").exists()
    # same seed, same data: the first validation batch is identical, so losses are on the same targets
    assert cws["val_k_mean"] >= 1 and "val_k_mean" not in tf
    assert cws["embedding"] == 16 * 16 and tf["embedding"] == 16 * 16  # tied 16-token tables of width 16


def test_compiled_runs_each_recipe_eager_and_compiled_side_by_side(pair, tmp_path, capsys):
    rc = main(["bench", "compare", str(pair[0]), "--steps", "3", "--compiled", "--out", str(tmp_path / "c"), "--json"])
    assert rc == 0, capsys.readouterr().err
    eager, comp = json.loads(capsys.readouterr().out)["runs"]
    assert (eager["compiled"], comp["compiled"]) == (False, True)
    assert eager["compile_seconds"] is None and comp["compile_seconds"] >= 0
    assert "compiled_speedup" not in eager and comp["compiled_speedup"] > 0
    assert comp["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-4)  # the same training
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["cws", "cws-compiled"]


def test_table_names_every_column_and_what_memory_means(monkeypatch, pair, capsys):
    row = {"params": 195588, "embedding": 8192, "non_embedding": 187396, "steps": 10, "stop": "max_steps",
           "train_seconds": 1.0, "tokens_per_s": 12345.0, "tokens_per_s_median": 23456.0, "val_loss": 0.5,
           "val_accuracy": 0.875, "memory": "cpu_peak_rss_growth", "peak_bytes": 3 * 2**20, "saved_bytes": 2**20}
    fake = {"device": "cpu", "budget": {"minutes": 5.0}, "overrides": [], "seed": 0, "runs": [
        {"recipe": str(pair[0]), "model": "cws", **row, "val_k_mean": 7.25, "val_bpb": 1.2345},
        {"recipe": str(pair[1]), "model": "transformer", "matched": {"key": "model.n_embd", "width": 128}, **row}]}
    fake["runs"][0]["stop"] = "max_minutes"  # the transformer reached max_steps first: marked with *
    monkeypatch.setattr(compare, "measure", lambda *a, **k: fake)
    assert main(["bench", "compare", *map(str, pair), "--minutes", "5"]) == 0
    text = capsys.readouterr().out
    assert text.count("10*") == 1
    for needle in ("reached the recipe's train.max_steps", "budget 5.0 min", "195.6k", "187.4k", "12.3k (23.5k)",
                   "87.5%", "7.25", "transformer n_embd=128", "RSS+", "3M", "growth of the peak resident set", "1.2345",
                   "bits per byte"):
        assert needle in text, needle


def test_match_params_picks_the_valid_width_nearest_the_target(pair):
    registry = get_registry()
    info = DataInfo(vocab_size=16)
    target = 2 * compare.count_params(Transformer(Transformer.Config(**TINY_TRANSFORMER), info))["params"]
    m = compare.match_width(str(pair[1]), [], target, "total", registry)
    assert m["key"] == "model.n_embd" and m["target"] == target

    def params(width):
        cfg = Transformer.Config(**{**TINY_TRANSFORMER, "n_embd": width})
        return compare.count_params(Transformer(cfg, info))["params"]

    assert m["params"] == params(m["width"])
    # valid widths for 2 heads step by 4 (an even head width for RoPE); neighbours are no nearer
    assert m["width"] % 4 == 0
    for w in (m["width"] - 4, m["width"] + 4):
        assert abs(params(w) - target) >= abs(m["params"] - target)
    assert compare.match_width(str(pair[0]), [], target, "total", registry) is None  # the CWS is not rescaled

    def non_emb(width):
        cfg = Transformer.Config(**{**TINY_TRANSFORMER, "n_embd": width})
        return compare.count_params(Transformer(cfg, info))["non_embedding"]

    n = compare.match_width(str(pair[1]), [], target, "non_embedding", registry)
    assert n["on"] == "non_embedding" and n["params"] == non_emb(n["width"])
    for w in (n["width"] - 4, n["width"] + 4):
        assert abs(non_emb(w) - target) >= abs(n["params"] - target)


def test_match_target_grammar():
    assert compare.parse_target(None, 1000) == 1000
    assert compare.parse_target("2x", 1000) == 2000
    assert compare.parse_target("1.5X", 1000) == 1500
    assert compare.parse_target("400000", 1000) == 400000
    with pytest.raises(compare.ConfigError, match="--match-params"):
        compare.parse_target("lots", 1000)


def test_count_params_counts_a_tied_table_once():
    model = Transformer(Transformer.Config(**TINY_TRANSFORMER), DataInfo(vocab_size=10))
    c = compare.count_params(model)
    assert c["embedding"] == 10 * 16
    assert c["params"] == sum(p.numel() for p in model.parameters()) == c["embedding"] + c["non_embedding"]


def test_tokens_per_s_weights_each_window_by_its_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    recs = [{"step": 10, "loss": 1.0, "tokens_per_s": 100.0}, {"step": 20, "val_loss": 1.0},
            {"step": 40, "loss": 1.0, "tokens_per_s": 300.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    # 10 steps at 100 tok/s, then 30 at 300 tok/s (the evaluation record between is not a window)
    overall, median = compare.tokens_per_s(path)
    assert overall == pytest.approx(40 / (10 / 100 + 30 / 300)) == 200
    assert median == 200.0  # of the two windows, 100 and 300


@pytest.mark.parametrize("argv, needle", [
    (["missing.yaml", "{tf}"], "missing.yaml: recipe file not found"),
    (["{cws}", "{tf}", "--steps", "3", "--minutes", "1"], "not allowed with argument"),
    (["{cws}", "{tf}", "train.max_stepz=3"], "train.max_stepz: unknown key"),
    (["{cws}", "{tf}", "model.k_max=3"], "model.k_max: unknown key"),  # overrides apply to every recipe
    (["{cws}", "{tf}", "data.n_pairs=2", "{cws}"], "give the recipes first"),
    (["{cws}", "{tf}", "--steps", "0"], "--steps: must be at least 1"),
    (["{cws}", "{tf}", "--match-params", "lots"], "--match-params: 'lots'"),
    (["{cws}", "{cws}", "--match-params"], "--match-params: no recipe after the first"),
])
def test_bad_input_is_one_line_and_exit_2(pair, capsys, argv, needle):
    argv = [a.format(cws=pair[0], tf=pair[1]) for a in argv]
    try:
        rc = main(["bench", "compare", *argv])
    except SystemExit as e:  # argparse's own errors (through the one-line Parser.error)
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err


def test_recipes_must_share_seed_and_data(pair, tmp_path, capsys):
    other = tmp_path / "other.yaml"
    data = yaml.safe_load(pair[1].read_text())
    data["data"]["n_pairs"] = 2
    other.write_text("# parallax run other.yaml\n" + yaml.safe_dump(data))
    assert main(["bench", "compare", str(pair[0]), str(other), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "data.n_pairs is 2" in err and "has 3" in err, err
    # one override for all makes them agree again (checked without training: an unknown key fails after)
    assert main(["bench", "compare", str(pair[0]), str(other), "data.n_pairs=2", "seed=1", "bogus=1"]) == 2
    assert "bogus: unknown key" in capsys.readouterr().err


def test_another_data_source_is_named_by_its_type(pair, tmp_path, capsys):
    other = tmp_path / "digits.yaml"
    data = yaml.safe_load(pair[1].read_text())
    data["data"] = {"type": "digits"}
    other.write_text("# parallax run digits.yaml\n" + yaml.safe_dump(data))
    assert main(["bench", "compare", str(pair[0]), str(other), "--steps", "1"]) == 2
    assert "data.type is 'digits'" in capsys.readouterr().err


def test_an_out_folder_from_an_earlier_comparison_is_not_reused(pair, tmp_path, capsys):
    out = tmp_path / "cmp"
    (out / pair[0].stem).mkdir(parents=True)  # as an earlier comparison left it
    assert main(["bench", "compare", *map(str, pair), "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "new --out" in err and len(err.strip().splitlines()) == 1
