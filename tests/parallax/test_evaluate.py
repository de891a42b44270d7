"""Evaluation per kind (accuracy and mean K, ``by_kind``), a larger K budget at evaluation
(``parallax eval RUN model.k_max=N``), and bits per byte against a hand computation."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from parallax import ModelOutput
from parallax.cli.main import main
from parallax.evaluate import evaluate
from parallax.testing.recipes import write_tiny_recipe
from parallax_plugins.data.multihop import MultiHopData


class HopOracle(nn.Module):
    """Answers 1-hop queries right (it follows one binding), every other query wrong, and reports
    K = 2h at a query of h hops, 1 elsewhere: so by_kind is known exactly."""

    has_k_loop = True

    def __init__(self, data: MultiHopData):
        super().__init__()
        self.data = data

    def forward(self, inputs):
        B, T = inputs.shape
        n_nodes, n_bind = self.data.cfg.n_nodes, self.data.n_bind
        logits = torch.zeros(B, T, self.data.vocab_size)
        k = torch.ones(B, T, dtype=torch.long)
        for b in range(B):
            row = inputs[b].tolist()
            succ = dict(zip(row[0:n_bind:3], row[2:n_bind:3]))  # a > b
            for pos in range(n_bind + 1, T, 3):  # the hop tokens
                h = row[pos] - n_nodes + 1
                logits[b, pos, succ[row[pos - 1]] if h == 1 else n_nodes] = 1.0  # n_nodes: a hop token, never an answer
                k[b, pos] = 2 * h
        return ModelOutput(logits=logits, k=k)


def test_by_kind_reports_accuracy_and_k_per_hop_count():
    data = MultiHopData(MultiHopData.Config(val_size=24, h_max=3, max_hops=5), seed=0, batch_size=8)
    res = evaluate(HopOracle(data), data, torch.device("cpu"), detailed=True)
    by = res["by_kind"]
    assert set(by) == {"other", "hop1", "hop2", "hop3"}  # kinds the validation set does not ask are left out
    assert by["hop1"]["accuracy"] == 1.0 and by["hop2"]["accuracy"] == 0.0 and by["hop3"]["accuracy"] == 0.0
    assert [by[f"hop{h}"]["k_mean"] for h in (1, 2, 3)] == [2.0, 4.0, 6.0]
    assert by["other"] == {"accuracy": None, "k_mean": 1.0, "n": 24 * (data.seq_len - data.cfg.n_queries)}
    assert sum(by[f"hop{h}"]["n"] for h in (1, 2, 3)) == 24 * data.cfg.n_queries
    assert res["val_accuracy"] == pytest.approx(by["hop1"]["n"] / (24 * data.cfg.n_queries))
    # the flat keys the training log carries
    assert res["val_k_mean_hop2"] == 4.0 and res["val_accuracy_hop1"] == 1.0 and "val_k_mean_hop4" not in res
    assert "by_kind" not in evaluate(HopOracle(data), data, torch.device("cpu"))  # only in the detailed report


@pytest.fixture(scope="module")
def multihop_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihop")
    recipe = write_tiny_recipe(tmp / "tiny.yaml", tmp / "run")
    data = "{type: multihop, n_nodes: 16, n_chains: 1, n_queries: 3, h_max: 2, max_hops: 4, val_size: 8}"
    assert main(["run", str(recipe), f"data={data}", "train.max_steps=2", "train.eval_every=2"]) == 0
    return tmp / "run"


def test_eval_json_by_kind_and_a_larger_k_budget(multihop_run, capsys):
    assert main(["eval", str(multihop_run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["by_kind"]) == {"other", "hop1", "hop2"}
    assert all(set(r) == {"accuracy", "k_mean", "n"} for r in res["by_kind"].values())
    assert max(map(int, res["k_histogram"])) <= 4  # the recipe's k_max
    # a larger budget at evaluation: with k_min = k_max every position runs all of it
    assert main(["eval", str(multihop_run), "model.k_max=9", "model.halting.k_min=9", "--json"]) == 0
    big = json.loads(capsys.readouterr().out)
    assert big["k_histogram"] == {"9": sum(res["k_histogram"].values())}
    assert all(r["k_mean"] == 9.0 for r in big["by_kind"].values())
    # extrapolation: hop counts the run never trained on, in the same vocabulary
    assert main(["eval", str(multihop_run), "data.eval_hops=[3,4]", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["by_kind"]) == {"other", "hop3", "hop4"}
    assert main(["eval", str(multihop_run)]) == 0
    assert "per kind" in capsys.readouterr().out


class Uniform(nn.Module):
    """Equal logits over the vocabulary: every target costs ln V nats."""

    has_k_loop = False

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, inputs):
        return ModelOutput(logits=torch.zeros(*inputs.shape, self.vocab))


def test_bits_per_byte_of_a_uniform_guess_by_hand(tmp_path):
    """Byte tokenizer: one id per byte (and per story separator), so a uniform guess over 257 ids
    costs log2(257) bits per byte; with the BPE tokenizer a token stands for several bytes, so the
    same nats per token are fewer bits per byte, by the bytes the targets decode to."""
    from parallax_plugins.data.tinystories import TinyStoriesData

    text = "Tom saw a big dog. The dog ran.\n<|endoftext|>\nMia had a café cake. She ate it all.\n<|endoftext|>\n"
    (tmp_path / "s.txt").write_text(text * 30, encoding="utf-8")
    common = dict(files=[str(tmp_path / "s.txt")], seq_len=16, val_sequences=None, val_fraction=0.1,
                  cache_dir=str(tmp_path / "cache"))
    data = TinyStoriesData(TinyStoriesData.Config(tokenizer="byte", **common), seed=0, batch_size=4)
    res = evaluate(Uniform(257), data, torch.device("cpu"))
    assert res["val_loss"] == pytest.approx(math.log(257))
    assert res["val_bpb"] == pytest.approx(math.log2(257))

    bpe = TinyStoriesData(TinyStoriesData.Config(tokenizer="bpe", vocab_size=300, **common), seed=0, batch_size=4)
    targets = [t for b in bpe.val_batches() for t in b["targets"].flatten().tolist()]
    eos = bpe.tokenizer.eos_id
    decoded = bpe.tokenizer.decode([t for t in targets if t != eos])
    n_bytes = len(decoded.encode("utf-8")) + targets.count(eos)  # each separator counts one byte
    assert "é" in decoded and bpe.val_bytes() == n_bytes and n_bytes > len(targets)
    res = evaluate(Uniform(bpe.vocab_size), bpe, torch.device("cpu"))
    assert res["val_bpb"] == pytest.approx(len(targets) * math.log2(bpe.vocab_size) / n_bytes)


def test_no_bits_per_byte_without_text():
    data = MultiHopData(MultiHopData.Config(val_size=4), seed=0)
    assert data.val_bytes() is None and "val_bpb" not in evaluate(Uniform(data.vocab_size), data, torch.device("cpu"))


def _sharded_eval(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        data = MultiHopData(MultiHopData.Config(val_size=24, h_max=3, max_hops=5), seed=0, batch_size=8)
        res = evaluate(HopOracle(data), data, torch.device("cpu"), shard=(rank, world))
        with open(f"{out}.{rank}", "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


def test_a_sharded_evaluation_sums_to_the_whole_sets(tmp_path):
    """Two gloo ranks split the 3 validation batches 2 + 1 (rank 1 repeats one batch uncounted, so
    both run the same number of forwards); their all-reduced figures are the single process's."""
    import multiprocessing as mp

    data = MultiHopData(MultiHopData.Config(val_size=24, h_max=3, max_hops=5), seed=0, batch_size=8)
    whole = evaluate(HopOracle(data), data, torch.device("cpu"))
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_sharded_eval, args=(r, 2, str(tmp_path / "store"), str(tmp_path / "res")))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    for r in range(2):
        got = json.loads((tmp_path / f"res.{r}").read_text())
        assert got.keys() == whole.keys()
        assert all(got[k] == pytest.approx(whole[k], rel=1e-12) for k in whole)


def test_shards_give_every_rank_the_same_number_of_forwards():
    from parallax.evaluate import _shard

    batches = [{"i": i} for i in range(5)]
    plans = [_shard(batches, (r, 3)) for r in range(3)]
    assert [len(p) for p in plans] == [2, 2, 2]
    counted = sorted(b["i"] for p in plans for b, c in p if c)
    assert counted == [0, 1, 2, 3, 4]  # each batch counted once, by one rank
    assert [c for _, c in plans[2]] == [True, False]
    assert _shard(batches[:1], (1, 2)) == [({"i": 0}, False)]  # a rank with no batch still runs one
    with pytest.raises(ValueError, match="one process"):
        evaluate(None, None, torch.device("cpu"), detailed=True, shard=(0, 2))
