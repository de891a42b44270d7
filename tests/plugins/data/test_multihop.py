"""Multi-hop data: every answer is the node h hops along the bindings written in the sequence, hop
tokens and kinds agree, batches are deterministic, validation is fixed and apart from training."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from parallax.registry import get_registry
from parallax_plugins.data.multihop import MultiHopData


def make(seed: int = 0, batch_size: int = 8, **cfg) -> MultiHopData:
    return MultiHopData(MultiHopData.Config(**{"val_size": 40, **cfg}), seed=seed, batch_size=batch_size)


def walk(inputs: list[int], data: MultiHopData) -> list[tuple[int, int, int, int]]:
    """(position of the hop token, start node, h, the node h hops on) for every query, found by
    following the bindings written in the sequence itself."""
    n_bind = data.n_bind
    succ: dict[int, int] = {}
    for a, arrow, b in zip(inputs[0:n_bind:3], inputs[1:n_bind:3], inputs[2:n_bind:3]):
        assert arrow == data.arrow and a not in succ, "a binding without its arrow, or a node bound twice"
        succ[a] = b
    out = []
    for pos in range(n_bind, len(inputs), 3):
        key, hop = inputs[pos], inputs[pos + 1]
        h = hop - data.cfg.n_nodes + 1
        node = key
        for _ in range(h):
            node = succ[node]
        out.append((pos + 1, key, h, node))
    return out


def test_registered_and_sized():
    assert get_registry().get("data_sources", "multihop") is MultiHopData
    data = make()
    assert data.vocab_size == 64 + 8 + 1  # nodes, one hop token per h in 1..max_hops, the arrow
    assert data.seq_len == 3 * 2 * 8 + 3 * 8  # 2 chains of 9 nodes: 16 bindings "a > b"; 8 queries of 3 tokens
    assert data.kind_names == {0: "other", **{h: f"hop{h}" for h in range(1, 9)}}
    b = data.batch(0)
    assert b["inputs"].shape == b["targets"].shape == b["kind"].shape == (8, data.seq_len)
    assert int(b["inputs"].max()) < data.vocab_size and int(b["inputs"].min()) >= 0


@pytest.mark.parametrize("cfg", [{}, {"n_chains": 3, "h_max": 2, "max_hops": 3, "n_queries": 5}])
def test_answers_follow_the_chain(cfg):
    data = make(**cfg)
    batches = [data.batch(s) for s in range(5)] + list(data.val_batches())
    seen_h = set()
    for b in batches:
        for row in range(b["inputs"].shape[0]):
            inputs, targets, kind = (b[k][row].tolist() for k in ("inputs", "targets", "kind"))
            queries = walk(inputs, data)
            for pos, _key, h, node in queries:
                assert 1 <= h <= data.cfg.h_max
                assert targets[pos] == node and inputs[pos + 1] == node  # the answer is the next input too
                assert kind[pos] == h
                seen_h.add(h)
            scored = {pos for pos, *_ in queries}
            assert all((t == -100) == (i not in scored) for i, t in enumerate(targets))  # only answers are scored
            assert all((k == 0) == (i not in scored) for i, k in enumerate(kind))
    assert seen_h == set(range(1, data.cfg.h_max + 1))


def test_chains_are_walks_of_distinct_nodes():
    data = make()
    inputs = data.batch(3)["inputs"][0].tolist()
    n_bind = data.n_bind
    src, dst = inputs[0:n_bind:3], inputs[2:n_bind:3]
    assert set(inputs[1:n_bind:3]) == {data.arrow}
    assert data.arrow not in inputs[n_bind:]  # the arrow marks bindings only
    assert len(set(src)) == len(src) and len(set(dst)) == len(dst)
    heads = set(src) - set(dst)  # chain starts
    assert len(heads) == data.cfg.n_chains
    succ = dict(zip(src, dst))
    for start in heads:
        node, n = start, 1
        while node in succ:
            node, n = succ[node], n + 1
        assert n == data.cfg.max_hops + 1  # chains of max_hops + 1 nodes by default


def test_deterministic_and_seeded():
    a, b = make(seed=0), make(seed=0)
    assert all(torch.equal(a.batch(4)[k], b.batch(4)[k]) for k in ("inputs", "targets", "kind"))
    assert not torch.equal(a.batch(4)["inputs"], a.batch(5)["inputs"])
    assert not torch.equal(a.batch(4)["inputs"], make(seed=1).batch(4)["inputs"])
    assert not torch.equal(a.batch(4, rank=1)["inputs"], a.batch(4)["inputs"])


def test_validation_is_fixed_and_apart_from_training():
    val = torch.cat([v["inputs"] for v in make(seed=0).val_batches()])
    other_seed = torch.cat([v["inputs"] for v in make(seed=7, batch_size=16).val_batches()])
    assert val.shape[0] == 40 and torch.equal(val, other_seed)  # the run's seed and batch size leave it alone
    data = make(seed=0, batch_size=32)
    n_bind = data.n_bind
    val_contexts = {tuple(r) for r in val[:, :n_bind].tolist()}
    for step in range(200):  # no validation context among the first 6,400 training sequences
        train = data.batch(step)["inputs"][:, :n_bind].tolist()
        assert not val_contexts & {tuple(r) for r in train}
    assert not torch.equal(val[:, :n_bind], torch.cat([data.batch(s)["inputs"] for s in range(2)])[:40, :n_bind])


def test_eval_hops_ask_longer_walks_of_the_same_contexts():
    base = make()
    far = make(eval_hops=[5, 6, 7, 8])
    assert far.vocab_size == base.vocab_size  # same vocabulary: a trained model evaluates on it
    near_val = torch.cat([v["inputs"] for v in base.val_batches()])
    far_batches = list(far.val_batches())
    far_val = torch.cat([v["inputs"] for v in far_batches])
    n_bind = base.n_bind
    assert torch.equal(near_val[:, :n_bind], far_val[:, :n_bind])
    hs = set()
    for b in far_batches:
        for row in b["inputs"].tolist():
            for _pos, _key, h, _node in walk(row, far):
                hs.add(h)
        assert set(b["kind"].unique().tolist()) <= {0, 5, 6, 7, 8}
    assert hs == {5, 6, 7, 8}
    assert torch.equal(far.batch(2)["inputs"], base.batch(2)["inputs"])  # training still asks 1..h_max


@pytest.mark.parametrize("cfg, message", [
    ({"eval_hops": [9]}, "outside 1..max_hops"),
    ({"h_max": 9}, "cannot exceed max_hops"),
    ({"chain_len": 4}, "must exceed the longest hop count"),
    ({"n_nodes": 10}, "exceed n_nodes"),
    ({"eval_hops": []}, "eval_hops is empty"),
])
def test_bad_configs_say_why(cfg, message):
    with pytest.raises(ValidationError, match=message):
        MultiHopData.Config(**cfg)


def test_the_hop_curriculum_adds_one_hop_at_a_time_and_leaves_validation_alone():
    data = make(h_ramp_steps=300)  # h_max 4: stages of 100 steps at 1, 2 and 3 hops, then 4
    assert [data.hops_at(s) for s in (0, 99, 100, 199, 200, 299, 300, 10_000)] == [1, 1, 2, 2, 3, 3, 4, 4]
    for step, most in ((0, 1), (150, 2), (250, 3), (400, 4)):
        kinds = torch.cat([data.batch(step + i)["kind"] for i in range(8)])
        assert set(kinds.unique().tolist()) == {0, *range(1, most + 1)}
    plain = make()
    assert all(torch.equal(a["kind"], b["kind"]) for a, b in zip(data.val_batches(), plain.val_batches()))
    assert torch.equal(data.batch(500)["inputs"], plain.batch(500)["inputs"])  # after the ramp: the same batches
