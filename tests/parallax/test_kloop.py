"""The K loop: training contract, per-position halting, gradient reach, O(1) memory in K, causality."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import parallax
from parallax.bench.memory import measure
from parallax.kloop import settle
from parallax.model import build_model
from parallax.recipe import load_recipe
from parallax.registry import get_registry
from parallax.build import build_data


def tiny_model(tiny_recipe, *overrides):
    recipe = load_recipe(str(tiny_recipe), list(overrides))
    data = build_data(recipe, get_registry())
    return build_model(recipe.model, data.info), data


class HaltAt(parallax.HaltingRule):
    """Halts the positions in ``mask (T,)`` after step ``at``; never halts the others."""

    def __init__(self, mask, at):
        self.mask, self.at = mask, at

    def update(self, raw, prev_raw, memo, k):
        return self.mask.expand(raw.shape[:2]) if k == self.at else torch.zeros(raw.shape[:2], dtype=torch.bool)


def _settle(model, inputs, rule, k_max):
    x = model.encoder(inputs)
    pos = torch.arange(x.shape[1])
    return settle(model.workspace, model.experts, [e.context(x) for e in model.experts], x, pos, rule, k_max, 1)


def test_positions_halt_independently(tiny_recipe):
    model, data = tiny_model(tiny_recipe)
    model.eval()
    inputs = data.batch(1)["inputs"]
    T = inputs.shape[1]
    mask = torch.arange(T) % 3 == 0
    with torch.no_grad():
        mixed = _settle(model, inputs, HaltAt(mask, 2), k_max=6)
        short = _settle(model, inputs, HaltAt(mask, -1), k_max=3)  # 2 frozen + 1 live for everyone
        long = _settle(model, inputs, HaltAt(mask, -1), k_max=6)
    assert mixed.k[:, mask].eq(3).all() and mixed.k[:, ~mask].eq(6).all()
    # a halted position's state is exactly what it would be had every position stopped there
    torch.testing.assert_close(mixed.h[:, mask], short.h[:, mask])
    torch.testing.assert_close(mixed.h[:, ~mask], long.h[:, ~mask])


def test_k_of_a_sequence_does_not_depend_on_its_batch(tiny_recipe):
    model, data = tiny_model(tiny_recipe, "model.k_max=8")
    model.eval()
    inputs = data.batch(1)["inputs"]
    with torch.no_grad():
        together = model(inputs).k
        alone = model(inputs[:1]).k
    assert torch.equal(together[:1], alone)


def test_model_is_causal(tiny_recipe):
    model, data = tiny_model(tiny_recipe)
    model.eval()
    a = data.batch(1)["inputs"]
    b = a.clone()
    t = 5
    b[:, t + 1] = (a[:, t + 1] + 1) % data.vocab_size
    with torch.no_grad():
        oa, ob = model(a), model(b)
    torch.testing.assert_close(oa.logits[:, : t + 1], ob.logits[:, : t + 1])
    assert torch.equal(oa.k[:, : t + 1], ob.k[:, : t + 1])
    assert not torch.allclose(oa.logits[:, t + 1], ob.logits[:, t + 1])


def test_gradients_reach_every_trainable_parameter(tiny_recipe):
    model, data = tiny_model(tiny_recipe, "model.halting.type=fixed", "~model.halting.rel_tol",
                             "~model.halting.abs_tol", "~model.halting.k_min")
    batch = data.batch(1)
    out = model(batch["inputs"])
    F.cross_entropy(out.logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, f"no gradient reaches: {missing}"


def test_only_live_steps_build_a_graph(tiny_recipe):
    model, data = tiny_model(tiny_recipe)
    x = model.encoder(data.batch(1)["inputs"])
    res = _settle(model, data.batch(1)["inputs"], HaltAt(torch.zeros(x.shape[1], dtype=torch.bool), -1), 4)
    assert res.h.requires_grad and res.k.eq(4).all()


def test_saved_for_backward_is_flat_in_k(tiny_recipe):
    recipe = load_recipe(str(tiny_recipe))
    rows = measure(recipe, [2, 8, 24])
    assert [r["k_realised"] for r in rows] == [2.0, 8.0, 24.0]
    assert rows[0]["saved_bytes"] > 0
    assert max(r["saved_bytes"] for r in rows) / rows[0]["saved_bytes"] <= 1.05


def test_live_steps_scale_saved_memory(tiny_recipe):
    # The counter above would pass vacuously if it saw nothing: two live steps must save more.
    one = measure(load_recipe(str(tiny_recipe)), [4])[0]["saved_bytes"]
    two = measure(load_recipe(str(tiny_recipe), ["model.live_steps=2"]), [4])[0]["saved_bytes"]
    assert two > one * 1.1


def test_training_k_schedules(tiny_recipe):
    model, _ = tiny_model(tiny_recipe, "model.k_max=9", "model.train_k=ramp", "model.k_ramp_steps=8")
    model.train()
    ks = [model.training_k() for _ in range(40)]
    assert all(1 <= k <= 9 for k in ks)
    assert ks[0] == 1  # the ramp starts at live_steps
    assert max(ks[:4]) <= 1 + int(4 / 8 * 8)  # cap after 4 batches: 5
    assert len(set(ks[8:])) > 3  # after the ramp: spread over [1, 9]
    assert int(model.state_dict()["batches_seen"]) == 40  # the schedule position is checkpointed

    fixed, _ = tiny_model(tiny_recipe, "model.k_max=9")
    fixed.train()
    assert {fixed.training_k() for _ in range(5)} == {9}


def test_evaluation_always_uses_k_max(tiny_recipe):
    model, data = tiny_model(tiny_recipe, "model.train_k=uniform", "model.halting.type=fixed", "~model.halting.rel_tol",
                             "~model.halting.abs_tol", "~model.halting.k_min")
    model.eval()
    with torch.no_grad():
        assert model(data.batch(1)["inputs"]).k.eq(4).all()


def test_gathering_active_positions_changes_nothing_but_the_work(tiny_recipe):
    model, data = tiny_model(tiny_recipe)
    # float64: the gathered and masked blocks have other shapes, so float32 kernels may round differently
    model.double().eval()
    inputs = data.batch(1)["inputs"]
    T = inputs.shape[1]
    mask = torch.arange(T) % 4 != 0  # three quarters halt after step 2
    x = model.encoder(inputs)
    pos = torch.arange(T)
    ctx = [e.context(x) for e in model.experts]
    with torch.no_grad():
        masked = settle(model.workspace, model.experts, ctx, x, pos, HaltAt(mask, 2), 7, 1, compact_below=0.0)
        gathered = settle(model.workspace, model.experts, ctx, x, pos, HaltAt(mask, 2), 7, 1, compact_below=1.0)
    assert torch.equal(masked.k, gathered.k)
    torch.testing.assert_close(gathered.h, masked.h, rtol=1e-10, atol=1e-12)
    B = inputs.shape[0]
    assert masked.work == 7 * B * T
    n_live = int((~mask).sum())  # positions still settling after step 2, the same in every row
    assert gathered.work == 2 * B * T + 4 * B * n_live + B * T  # steps 3..6 run on those alone


def test_experts_without_gather_fall_back_to_masking(tiny_recipe):
    model, data = tiny_model(tiny_recipe)
    model.eval()
    probe = next(e for e in model.experts if e.clock == "h")
    probe.gather = False  # as an expert that does not accept per-row positions
    inputs = data.batch(1)["inputs"]
    mask = torch.arange(inputs.shape[1]) % 4 != 0
    x = model.encoder(inputs)
    with torch.no_grad():
        res = settle(model.workspace, model.experts, [e.context(x) for e in model.experts], x,
                     torch.arange(inputs.shape[1]), HaltAt(mask, 2), 7, 1, compact_below=1.0)
    assert res.work == 7 * inputs.numel()


def test_a_block_is_gathered_only_when_gathering_narrows_it(tiny_recipe, monkeypatch):
    import parallax.kloop as kloop

    model, data = tiny_model(tiny_recipe)
    model.eval()
    inputs = data.batch(1)["inputs"]
    B, T = inputs.shape
    gathers = []
    real = kloop._WorkingSet.gather.__func__
    monkeypatch.setattr(kloop._WorkingSet, "gather",
                        classmethod(lambda cls, *a: gathers.append(a[-1]) or real(cls, *a)))
    x = model.encoder(inputs)
    ctx = [e.context(x) for e in model.experts]

    def run(mask):
        gathers.clear()
        with torch.no_grad():
            return settle(model.workspace, model.experts, ctx, x, torch.arange(T), HaltAt(mask, 2), 7, 1,
                          compact_below=0.75)

    # every row keeps a quarter of its positions: one gather to that width, kept to the end
    even = (torch.arange(T) % 4 != 0).expand(B, T)
    n_live = int((~even[0]).sum())
    res = run(even)
    assert gathers == [n_live] and res.work == 2 * B * T + 4 * B * n_live + B * T
    # one row stays fully active, so no gather can narrow the block: none happens, every step masks
    uneven = even.clone()
    uneven[0] = False
    res = run(uneven)
    assert gathers == [] and res.work == 7 * B * T
