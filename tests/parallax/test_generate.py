"""Incremental generation: greedy parity with full recompute, reproducible sampling, and the
generate / eval / bench generate commands on a trained text run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from parallax.cli.main import main
from parallax.generate import IncrementalState, generate, recompute_logits, sample
from parallax.runs import open_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "data"))
from text_helpers import text_recipe, write_txt  # noqa: E402


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("gen")
    recipe = text_recipe(tmp, [write_txt(tmp / "s.txt", 40)], tokenizer="bpe", vocab_size=300)
    assert main(["run", str(recipe), "train.max_steps=4"]) == 0
    return tmp / "run"


def test_incremental_logits_equal_full_forward(text_run):
    model = open_run(text_run).model
    ids = torch.randint(0, 300, (2, 12))
    state = IncrementalState(model)
    for t in range(ids.shape[1]):
        logits, k = state.feed(ids[:, t : t + 1])
        ref, ref_k = recompute_logits(model, ids[:, : t + 1])
        torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
        assert torch.equal(k, ref_k)


def test_greedy_cached_equals_greedy_recompute(text_run):
    model = open_run(text_run).model
    prompt = [5, 17, 42, 8, 99]
    cached = generate(model, prompt, 12, temperature=0, cached=True)
    full = generate(model, prompt, 12, temperature=0, cached=False)
    assert cached.ids == full.ids and len(cached.ids) == 12
    assert cached.k == full.k


def test_sampling_is_reproducible_under_a_seed(text_run):
    model = open_run(text_run).model
    a = generate(model, [1, 2, 3], 10, temperature=1.0, top_k=20, seed=7)
    b = generate(model, [1, 2, 3], 10, temperature=1.0, top_k=20, seed=7)
    c = generate(model, [1, 2, 3], 10, temperature=1.0, top_k=20, seed=8)
    assert a.ids == b.ids and a.ids != c.ids


def test_top_k_keeps_only_the_k_best():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    drawn = {int(sample(logits, 1.0, 2, gen)) for _ in range(50)}
    assert drawn <= {1, 2} and int(sample(logits, 0, None, None)) == 1


def test_generate_command_is_reproducible(text_run, capsys):
    outs = []
    for _ in range(2):
        assert main(["generate", str(text_run), "--prompt", "Once upon", "--max-new-tokens", "8", "--seed", "3"]) == 0
        cap = capsys.readouterr()
        outs.append(cap.out)
        assert "tokens/s" in cap.err and "mean K per generated token" in cap.err
    assert outs[0] == outs[1] and outs[0].startswith("Once upon")
    assert main(["generate", str(text_run), "--prompt", "Once", "--max-new-tokens", "4", "--show-k"]) == 0
    assert "[K] after each generated token" in capsys.readouterr().out


def test_generate_json_has_each_tokens_k_and_log_probability(text_run, capsys):
    assert main(["generate", str(text_run), "--prompt", "Once upon", "--max-new-tokens", "6", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["prompt"] == "Once upon" and res["k_max"] == 4 and len(res["tokens"]) == 6
    assert all(1 <= t["k"] <= 4 and t["logprob"] <= 0 for t in res["tokens"])
    model = open_run(text_run).model
    greedy = generate(model, res["prompt_ids"], 3, temperature=0)
    state = IncrementalState(model)
    for t in res["prompt_ids"]:
        logits, _ = state.feed(torch.tensor([[t]]))
    assert greedy.logprob[0] == pytest.approx(torch.log_softmax(logits, -1).max().item(), abs=1e-5)


def test_show_k_without_colour_puts_k_after_each_token(text_run, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal...
    monkeypatch.setenv("NO_COLOR", "1")  # ...that asks for no colour
    args = ["generate", str(text_run), "--prompt", "Once", "--max-new-tokens", "5", "--seed", "1"]
    assert main([*args, "--show-k"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[3" not in out
    assert main([*args, "--json"]) == 0
    tokens = json.loads(capsys.readouterr().out)["tokens"]
    assert out.splitlines()[0] == "Once" + "".join(f"{t['text']}[{t['k']}]" for t in tokens)


def test_show_k_colours_and_legend_use_standard_colours(text_run, capsys, monkeypatch):
    from parallax.cli.kview import bins, colour_of

    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm")  # a terminal with 8 colours: rich would downgrade a gradient
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("COLORTERM", raising=False)
    assert main(["generate", str(text_run), "--prompt", "Once", "--max-new-tokens", "5", "--show-k"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[3" in out and "38;2;" not in out and "38;5;" not in out  # standard colours only
    assert [colour_of(k, 4) for k in (1, 2, 3, 4)] == ["blue", "cyan", "yellow", "red"]
    assert [colour_of(k, 16) for k in (1, 16)] == ["blue", "red"] and len(bins(16)) == 5
    legend = out.strip().splitlines()[-1]
    for code in ("34", "36", "33", "31"):  # blue cyan yellow red, in the legend as in the text
        assert f"\x1b[{code}m" in legend


def test_eval_command_json(text_run, capsys):
    assert main(["eval", str(text_run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["val_perplexity"] == pytest.approx(2.718281828 ** res["val_loss"], rel=1e-6)
    quant = res["k_by_surprisal_quantile"]
    assert [q["quantile"] for q in quant] == [1, 2, 3, 4, 5]
    assert all(quant[i]["surprisal_max"] <= quant[i + 1]["surprisal_min"] for i in range(4))
    assert sum(res["k_histogram"].values()) == sum(q["n"] for q in quant)  # every position is a target here
    assert main(["eval", str(text_run)]) == 0
    assert "mean K per surprisal quantile" in capsys.readouterr().out


def test_eval_on_other_files(text_run, tmp_path, capsys):
    other = write_txt(tmp_path / "other.txt", 25)
    assert main(["eval", str(text_run), "data.cache_dir=" + str(tmp_path / "c"), "--json", "--data", str(other)]) == 0
    assert "val_loss" in json.loads(capsys.readouterr().out)


def test_bench_generate_json(text_run, capsys):
    assert main(["bench", "generate", str(text_run), "--context", "24", "--tokens", "3", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["context"] == 24 and row["same_tokens"] is True
    assert row["speedup"] == pytest.approx(row["recompute_s_per_token"] / row["cached_s_per_token"])


def test_bench_generate_compiled_times_both_side_by_side(text_run, capsys):
    assert main(["bench", "generate", str(text_run), "--context", "12", "--tokens", "3", "--compiled", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["compiled_same_tokens"] is True and row["compile_seconds"] > 0
    assert row["compiled_speedup"] == pytest.approx(row["eager_cached_s_per_token"] / row["compiled_s_per_token"])


def test_compiled_generation_and_evaluation_give_the_eager_answers(text_run, capsys):
    assert main(["generate", str(text_run), "--prompt", "the", "--max-new-tokens", "4", "--json"]) == 0
    eager = json.loads(capsys.readouterr().out)
    assert main(["generate", str(text_run), "--prompt", "the", "--max-new-tokens", "4", "--json", "--compile"]) == 0
    comp = json.loads(capsys.readouterr().out)
    assert [t["id"] for t in comp["tokens"]] == [t["id"] for t in eager["tokens"]]
    assert [t["k"] for t in comp["tokens"]] == [t["k"] for t in eager["tokens"]]
    results = []
    for setting in ("false", "true"):
        assert main(["eval", str(text_run), f"train.compile={setting}", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[1]["val_loss"] == pytest.approx(results[0]["val_loss"], rel=1e-4)
    assert results[1]["val_k_mean"] == pytest.approx(results[0]["val_k_mean"], abs=0.01)


def test_generate_needs_a_run(tmp_path, capsys):
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_generate_streams_tokens_so_an_interrupt_keeps_them(text_run, capsys, monkeypatch):
    import parallax.generate as gen

    calls = {"n": 0}
    real = gen.sample

    def interrupted_at_the_fifth(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(gen, "sample", interrupted_at_the_fifth)
    code = main(["generate", str(text_run), "--prompt", "Once", "--max-new-tokens", "1000000000", "--temperature", "0"])
    out, err = capsys.readouterr()
    assert code == 130
    assert out.startswith("Once") and len(out) > len("Once")  # the four tokens before the interrupt were printed
    assert "interrupted after 4 generated tokens; they are printed above" in err
