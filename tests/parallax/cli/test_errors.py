"""Malformed recipes, overrides and flags: each exits 2 with one line that names the problem."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from parallax.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from yaml_bombs import bomb, within  # noqa: E402


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse exits directly
        rc = e.code
    return rc, capsys.readouterr().err


def check(capsys, argv, *needles):
    rc, err = run_cli(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


# (overrides on the tiny recipe, words the message must contain)
OVERRIDE_CASES = [
    (["sed=1"], ["sed", "did you mean 'seed'"]),
    (["model.type=cwz"], ["model.type", "did you mean 'cws'"]),
    (["model.experts.0.type=mamba"], ["model.experts.0.type", "mamba_siso"]),
    (["model.experts.1.slotz=3"], ["model.experts.1.slotz", "did you mean 'slots'"]),
    (["model.experts.0.slots=two"], ["model.experts.0.slots", "integer"]),
    (["model.experts.0.slots=0"], ["model.experts.0.slots", "greater than or equal to 1"]),
    (["model.k_max=0"], ["model.k_max"]),
    (["model.live_steps=9"], ["live_steps", "k_max"]),
    (["model.experts=[]"], ["model.experts", "at least 1"]),
    (["train.optimizer.type=adamww"], ["train.optimizer.type", "did you mean 'adamw'"]),
    (["train.optimizer.betaz=[0.9,0.99]"], ["train.optimizer.betaz", "did you mean 'betas'"]),
    (["train.precision=fp8"], ["train.precision", "'bf16'"]),
    (["train.max_steps"], ["train.max_steps", "key=value"]),
    (["train.max_steps=["], ["train.max_steps", "YAML"]),
    (["~train.nope"], ["train.nope", "no such key"]),
    (["~model.experts.9"], ["model.experts.9", "no such list index"]),
    (["~data.n_keys."], ["data.n_keys: is a value", "no key ''"]),  # was a TypeError
    (["~seed.x"], ["seed: is a value", "no key 'x'"]),
    (["~seed.x.y"], ["seed.x: no such key"]),  # was a TypeError
    (["seed.x=1"], ["seed"]),
    (["data.type=recal"], ["data.type", "did you mean 'recall'"]),
    (["data.n_pairs=20"], ["data", "n_pairs"]),
    (["model.workspace.init_h=random"], ["model.workspace.init_h"]),
    (["~model.decoder"], ["model.decoder", "missing"]),
    (["model.halting.type=sometimes"], ["model.halting.type", "momentum"]),
    (["train.batch_size=-1"], ["train.batch_size"]),
    # option values the optimizer itself rejects, and optimizers the trainer cannot drive
    (["train.optimizer.betas=5"], ["train.optimizer", "AdamW"]),
    (["train.optimizer.type=sgd", "train.optimizer.momentum=abc"], ["train.optimizer", "SGD"]),
    (["train.optimizer.type=lbfgs"], ["train.optimizer", "LBFGS"]),
    (["train.optimizer.type=sparseadam"], ["train.optimizer", "dense gradients"]),
    (["train.optimizer.type=muon", "train.optimizer.adamw.betas=[2,3]"], ["train.optimizer", "beta"]),
    (["train.threads=100000"], ["train.threads", "1024"]),
    (["out_dir="], ["out_dir", "at least 1 character"]),
    (["model.experts.slots=2"], ["model.experts.slots", "cannot apply override"]),  # a list indexed by a word
    (["model.experts.1.heads=3"], ["model.experts.1.heads:", "d_model 16"]),  # a plugin's own check, at its path
]


@pytest.mark.parametrize("overrides,needles", OVERRIDE_CASES, ids=[" ".join(c[0]) for c in OVERRIDE_CASES])
def test_bad_override_is_one_line_exit_2(capsys, tiny_recipe, overrides, needles):
    check(capsys, ["validate", str(tiny_recipe), *overrides], *needles)


def test_missing_recipe_file(capsys, tmp_path):
    check(capsys, ["validate", str(tmp_path / "nope.yaml")], "nope.yaml", "not found", "parallax ls")


def test_recipe_is_a_directory(capsys, tmp_path):
    check(capsys, ["validate", str(tmp_path)], "not a file")


@pytest.mark.parametrize(
    "text,needles",
    [
        ("model: [unclosed\n", ["invalid YAML", "line"]),
        ("", ["empty"]),
        ("- a\n- b\n", ["mapping"]),
        ("seed: 0\n", ["model", "missing"]),
        ("a: &x [*x]\n", ["alias", "loop"]),
    ],
    ids=["syntax", "empty", "list", "no-model", "alias-loop"],
)
def test_malformed_recipe_file(capsys, tmp_path, text, needles):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    check(capsys, ["validate", str(p)], *needles)


def test_recipe_not_utf8(capsys, tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("seed: 0 # caf\xe9\n".encode("latin-1"))
    check(capsys, ["validate", str(p)], "UTF-8")


def test_build_time_errors_are_caught_by_validate(capsys, tiny_recipe):
    check(capsys, ["validate", str(tiny_recipe), "model.workspace.heads=3"], "heads", "divisible")


def test_unknown_flag_suggests_override(capsys, tiny_recipe):
    check(capsys, ["run", str(tiny_recipe), "--max-steps", "3"], "train.max_steps=VALUE")


def test_unknown_command_suggests_closest(capsys):
    check(capsys, ["rn", "x.yaml"], "parallax run")


def test_resume_true_without_checkpoint(capsys, tiny_recipe):
    check(capsys, ["run", str(tiny_recipe), "train.resume=true"], "train.resume", "resume=auto")


def test_fp16_on_cpu(capsys, tiny_recipe):
    check(capsys, ["run", str(tiny_recipe), "train.precision=fp16", "train.device=cpu"], "fp16", "bf16")


def test_rerun_into_existing_run_dir_refuses(capsys, tiny_recipe):
    assert main(["run", str(tiny_recipe), "train.max_steps=1"]) == 0
    capsys.readouterr()
    check(capsys, ["run", str(tiny_recipe), "train.max_steps=1"], "already holds checkpoints", "resume=auto")


def test_cp_refuses_to_overwrite(capsys, tmp_path):
    dest = tmp_path / "r.yaml"
    dest.write_text("x")
    check(capsys, ["cp", "recall", str(dest)], "already exists", "--force")


COUNT_CASES = [
    (["bench", "kernels", "--repeats", "0"], ["--repeats", "at least 1"]),
    (["bench", "halting", "recall", "--batches", "0"], ["--batches", "at least 1"]),
    (["bench", "halting", "recall", "--repeats", "x"], ["--repeats", "whole number"]),
    (["bench", "dynamics", "runs/x", "--k", "0"], ["--k", "at least 1"]),
    (["bench", "compare", "recall", "--minutes", "-1"], ["--minutes", "> 0"]),
    (["generate", "runs/x", "--prompt", "a", "--temperature", "nan"], ["--temperature", "finite"]),
    (["generate", "runs/x", "--prompt", "a", "--temperature", "-1"], ["--temperature", ">= 0"]),
    (["generate", "runs/x", "--prompt", "a", "--threads", "100000"], ["--threads", "at most 1024"]),
]


@pytest.mark.parametrize("argv,needles", COUNT_CASES, ids=[" ".join(c[0]) for c in COUNT_CASES])
def test_bad_counts_and_numbers_are_one_line(capsys, argv, needles):
    check(capsys, argv, *needles)


def test_override_after_a_flag_says_where_it_goes(capsys, tiny_recipe):
    check(capsys, ["bench", "halting", str(tiny_recipe), "--json", "train.batch_size=2"],
          "train.batch_size=2", "before the --options")


def test_unwritable_out_dir_is_one_line(capsys, tiny_recipe, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    check(capsys, ["run", str(tiny_recipe), f"out_dir={blocker / 'run'}"], str(blocker), "writable")


def test_resume_from_a_run_directory_names_its_checkpoint(capsys, tiny_recipe, tmp_path):
    assert main(["run", str(tiny_recipe), "train.max_steps=2", "train.save_every=2"]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    check(capsys, ["run", str(tiny_recipe), f"out_dir={tmp_path / 'other'}", f"train.resume={run}"],
          "is a run directory", "step-00000002")


def test_run_without_a_recipe_names_only_what_is_required(capsys):
    rc, err = run_cli(capsys, "run")
    assert rc == 2 and "required: recipe" in err and "overrides" not in err


def test_cp_to_an_empty_destination_is_refused(capsys):
    check(capsys, ["cp", "recall", ""], "DEST is empty")


def test_a_full_disk_outside_a_save_says_to_free_space(capsys, tiny_recipe, monkeypatch):
    import errno

    from parallax.metrics import MetricsFile

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", "metrics.jsonl")

    monkeypatch.setattr(MetricsFile, "append", full)
    rc, err = run_cli(capsys, "run", str(tiny_recipe))
    lines = [ln for ln in err.splitlines() if ln.startswith("parallax: error:")]
    assert rc == 2 and lines == [err.strip().splitlines()[-1]] and "Traceback" not in err, err
    assert "metrics.jsonl: No space left on device; free space on that disk or choose another out_dir" in lines[0]


# YAML that the safe loader alone gets wrong: a traceback, a hang, or a duplicate key kept silently
YAML_OVERRIDE_CASES = {
    "duplicate-key": (["model.decoder={layers: 1, layers: 2}"],
                      ["model.decoder.layers: duplicate key", "columns 2 and 13", "keep one"]),
    "hex-without-digits": (["seed=0x_"], ["seed", "'0x_'", "YAML"]),
    "impossible-date": (["seed=2020-13-45"], ["seed", "month must be in 1..12"]),
    "5000-digits": (["seed=" + "1" * 5000], ["seed", "4300 digits"]),
    "nested-3000-deep": (["seed=" + "[" * 3000 + "]" * 3000], ["seed", "nested more than 32 levels"]),  # RecursionError
    "unset-env": (["out_dir=${oc.env:PARALLAX_UNSET_VAR}"],
                  ["out_dir: environment variable PARALLAX_UNSET_VAR is not set",
                   "set PARALLAX_UNSET_VAR in the environment, or give a default: "
                   "${oc.env:PARALLAX_UNSET_VAR,default}"]),
    "unset-env-in-a-list": (["model.experts.0.slots=${oc.env:PARALLAX_UNSET_VAR}"],
                            ["model.experts.0.slots: environment variable PARALLAX_UNSET_VAR"]),
    "bad-interpolation": (["model.experts.0.slots=${nope}"], ["model.experts.0.slots", "'nope' not found"]),
}


@pytest.mark.parametrize("overrides,needles", YAML_OVERRIDE_CASES.values(), ids=YAML_OVERRIDE_CASES)
def test_yaml_override_is_one_line_exit_2(capsys, tiny_recipe, monkeypatch, overrides, needles):
    monkeypatch.delenv("PARALLAX_UNSET_VAR", raising=False)
    check(capsys, ["validate", str(tiny_recipe), *overrides], *needles)


def _edit(recipe: Path, old: str, new: str) -> Path:
    text = recipe.read_text()
    assert old in text
    recipe.write_text(text.replace(old, new, 1))
    return recipe


def test_duplicate_key_in_a_recipe_names_both_lines(capsys, tiny_recipe):
    lines = tiny_recipe.read_text().splitlines()
    first = lines.index("  d_model: 16") + 1
    _edit(tiny_recipe, "  k_max: 4\n", "  k_max: 4\n  d_model: 32\n")
    check(capsys, ["validate", str(tiny_recipe)],
          f"model.d_model: duplicate key (lines {first} and {first + 2} of {tiny_recipe}); keep one")


def test_a_misspelt_top_level_key_is_reported_with_its_did_you_mean(capsys, tiny_recipe):
    _edit(tiny_recipe, "\nmodel:\n", "\nmodle:\n")
    rc, err = run_cli(capsys, "validate", str(tiny_recipe))
    assert rc == 2
    assert err.startswith("parallax: error: modle: unknown key; did you mean 'model'?"), err
    assert "more error" not in err  # the missing `model` is what the misspelling explains


def test_a_misspelt_key_comes_before_other_errors(capsys, tiny_recipe):
    _edit(tiny_recipe, "\nmodel:\n", "\nmodle:\n")
    check(capsys, ["validate", str(tiny_recipe), "seed=x"],
          "modle: unknown key; did you mean 'model'?", "(and 1 more error)")


def test_unset_environment_variable_in_a_recipe(capsys, tiny_recipe, monkeypatch):
    monkeypatch.delenv("PARALLAX_UNSET_VAR", raising=False)
    _edit(tiny_recipe, "seed: 0", "seed: ${oc.env:PARALLAX_UNSET_VAR}")
    check(capsys, ["validate", str(tiny_recipe)], "seed: environment variable PARALLAX_UNSET_VAR is not set",
          "${oc.env:PARALLAX_UNSET_VAR,default}")
    monkeypatch.setenv("PARALLAX_UNSET_VAR", "3")
    rc, _ = run_cli(capsys, "validate", str(tiny_recipe))
    assert rc == 0


def test_interpolations_resolve_after_overrides(capsys, tiny_recipe, monkeypatch):
    import yaml

    monkeypatch.delenv("PARALLAX_UNSET_VAR", raising=False)
    monkeypatch.setenv("PARALLAX_TEST_LIVE", "2")
    _edit(tiny_recipe, "  live_steps: 1\n", "  live_steps: ${oc.decode:${oc.env:PARALLAX_TEST_LIVE}}\n")
    _edit(tiny_recipe, "hidden: 16", "hidden: ${model.d_model}")
    assert main(["cat", str(tiny_recipe), "model.d_model=32", r"out_dir=a\${b}-${oc.env:PARALLAX_UNSET_VAR,x}"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["live_steps"] == 2 and cfg["model"]["experts"][2]["hidden"] == 32
    assert cfg["out_dir"] == "a${b}-x"


# nine anchors of nine aliases each, 428 bytes: 9**9 values
BOMB = bomb()


def test_alias_bomb_is_refused_in_well_under_a_second(capsys, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.perf_counter()
    with within(5):  # on the safe loader alone, hours
        check(capsys, ["validate", str(path)], "YAML aliases expand to more than 100000 nodes", "bomb.yaml")
    assert time.perf_counter() - start < 1.0


def test_alias_bomb_in_an_override_value(capsys, tiny_recipe):
    flow = "{" + BOMB.strip().replace("\n", ", ") + "}"
    with within(5):
        check(capsys, ["validate", str(tiny_recipe), f"model.extra={flow}"], "model.extra.a", "more than 100000 nodes")


def test_a_step_folder_without_its_config_names_what_is_missing(capsys, tiny_recipe, tmp_path):
    from parallax.testing import train

    train(tiny_recipe, tmp_path / "run", steps=3)
    (tmp_path / "run" / "step-00000003" / "config.yaml").unlink()
    rc, err = run_cli(capsys, "eval", str(tmp_path / "run" / "step-00000003"))
    assert rc == 2 and "parallax ls" not in err
    assert "no config.yaml, the recipe these weights were trained with" in err and "copy the run's" in err


def test_cp_onto_the_built_in_recipe_itself_is_refused_without_reprs(capsys):
    from parallax.recipe import builtin_recipes

    rc, err = run_cli(capsys, "cp", "recall", str(builtin_recipes()["recall"]), "--force")
    assert rc == 2 and "PosixPath" not in err and "is the built-in recipe 'recall' itself" in err
