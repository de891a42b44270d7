"""The K loop: training contract, per-position halting, gradient reach, O(1) memory in K, causality."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import parallax
from parallax.bench.memory import measure
from parallax.build import build_data
from parallax.kloop import settle
from parallax.model import build_model
from parallax.recipe import load_recipe
from parallax.registry import get_registry


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
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
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

    # a warm-up of k_max: the cap holds at k_ramp_from for k_ramp_hold batches, then rises to k_max
    warm, _ = tiny_model(tiny_recipe, "model.k_max=9", "model.train_k=ramp", "model.k_ramp_steps=10",
                         "model.k_ramp_from=3", "model.k_ramp_hold=20")
    warm.train()
    ks = [warm.training_k() for _ in range(200)]
    assert set(ks[:20]) == {1, 2, 3}  # uniform in [live_steps, 3] while held
    assert max(ks[20:25]) <= 3 + int(5 / 10 * 6)  # cap after 5 ramp batches: 6
    assert max(ks[30:]) == 9 and len(set(ks[30:])) == 9  # then spread over all of [1, 9]

    # grow: every batch gets the cap itself, a depth curriculum rising by 1 every 4 batches, up to 9
    grow, _ = tiny_model(tiny_recipe, "model.k_max=9", "model.train_k=grow", "model.k_ramp_steps=32")
    grow.train()
    assert [grow.training_k() for _ in range(40)] == [1 + min(8, (i + 1) // 4) for i in range(40)]

    fixed, _ = tiny_model(tiny_recipe, "model.k_max=9")
    fixed.train()
    assert {fixed.training_k() for _ in range(5)} == {9}


def test_evaluation_always_uses_k_max(tiny_recipe):
    model, data = tiny_model(tiny_recipe, "model.train_k=uniform", "model.halting.type=fixed", "~model.halting.rel_tol",
                             "~model.halting.abs_tol", "~model.halting.k_min")
    model.eval()
    with torch.no_grad():
        assert model(data.batch(1)["inputs"]).k.eq(4).all()


class HaltEach(parallax.HaltingRule):
    """Halts each position after its own step ``stop (B,T)``."""

    def __init__(self, stop):
        self.stop = stop

    def update(self, raw, prev_raw, memo, k):
        return self.stop == k


def _uneven_stops(B, T, k_max, seed=0):
    """Each position its own halting step in 1..k_max-1 (some never halt), unevenly across rows."""
    g = torch.Generator().manual_seed(seed)
    stop = torch.randint(1, k_max + 2, (B, T), generator=g)
    stop[0] = k_max + 5  # one row never halts: a per-row gather could not narrow the block at all
    return stop


def _double(tiny_recipe):
    model, data = tiny_model(tiny_recipe)
    # float64: the packed and masked blocks have other shapes, so float32 kernels may round differently
    model.double().eval()
    inputs = data.batch(1)["inputs"]
    x = model.encoder(inputs)
    ctx = [e.context(x) for e in model.experts]
    return model, x, ctx, inputs


def test_packing_active_positions_changes_nothing_but_the_work(tiny_recipe):
    model, x, ctx, _ = _double(tiny_recipe)
    B, T, _ = x.shape
    k_max = 7
    stop = _uneven_stops(B, T, k_max)
    pos = torch.arange(T)
    with torch.no_grad():
        masked = settle(model.workspace, model.experts, ctx, x, pos, HaltEach(stop), k_max, 1, compact_below=0.0)
        packed = settle(model.workspace, model.experts, ctx, x, pos, HaltEach(stop), k_max, 1, compact_below=1.0)
        half = settle(model.workspace, model.experts, ctx, x, pos, HaltEach(stop), k_max, 1, compact_below=0.8)
    frozen = stop.clamp(max=k_max - 1)  # each position's frozen steps
    assert torch.equal(masked.k, frozen + 1) and torch.equal(packed.k, masked.k) and torch.equal(half.k, masked.k)
    torch.testing.assert_close(packed.h, masked.h, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(half.h, masked.h, rtol=1e-10, atol=1e-12)  # repacked less often, halted ones masked
    torch.testing.assert_close(packed.h_frozen, masked.h_frozen, rtol=1e-10, atol=1e-12)
    assert masked.work == k_max * B * T
    # exactly each position's frozen steps, plus the live step of every position
    assert packed.work == int(frozen.sum()) + B * T == int(packed.k.sum())
    assert packed.work < half.work < masked.work


def test_packed_settle_passes_the_gradient_of_the_live_step(tiny_recipe):
    model, x, _, inputs = _double(tiny_recipe)
    B, T, _ = x.shape
    stop = _uneven_stops(B, T, 5, seed=1)
    grads = []
    for c in (0.0, 1.0):  # masked, packed
        model.zero_grad()
        x = model.encoder(inputs)
        ctx = [e.context(x) for e in model.experts]
        res = settle(model.workspace, model.experts, ctx, x, torch.arange(T), HaltEach(stop), 5, 1, compact_below=c)
        res.h.pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-10)


def test_experts_without_packing_fall_back_to_masking(tiny_recipe):
    model, data = tiny_model(tiny_recipe)
    model.eval()
    probe = next(e for e in model.experts if e.clock == "h")
    probe.packs = False  # as an expert that does not accept packed queries
    inputs = data.batch(1)["inputs"]
    mask = torch.arange(inputs.shape[1]) % 4 != 0
    x = model.encoder(inputs)
    with torch.no_grad():
        res = settle(model.workspace, model.experts, [e.context(x) for e in model.experts], x,
                     torch.arange(inputs.shape[1]), HaltAt(mask, 2), 7, 1, compact_below=1.0)
    assert res.work == 7 * inputs.numel()


def test_the_list_is_repacked_once_it_falls_below_compact_below(tiny_recipe, monkeypatch):
    import parallax.kloop as kloop

    model, data = tiny_model(tiny_recipe)
    model.eval()
    inputs = data.batch(1)["inputs"]
    B, T = inputs.shape
    P = B * T
    packs = []
    real = kloop._Packed.gather.__func__
    monkeypatch.setattr(kloop._Packed, "gather",
                        classmethod(lambda cls, *a: packs.append(int(a[-1].sum())) or real(cls, *a)))
    x = model.encoder(inputs)
    ctx = [e.context(x) for e in model.experts]
    # a quarter of the positions halt after step 2, another quarter after step 3
    stop = torch.full((B, T), 99)
    flat = stop.view(-1)
    flat[0::4], flat[1::4] = 2, 3
    n3 = int((stop == 99).sum())  # still settling after step 3
    n2 = n3 + int((stop == 3).sum())  # after step 2

    def run(c):
        packs.clear()
        with torch.no_grad():
            return settle(model.workspace, model.experts, ctx, x, torch.arange(T), HaltEach(stop), 7, 1,
                          compact_below=c)

    res = run(1.0)  # whenever one halts
    assert packs == [n2, n3] and res.work == 2 * P + n2 + 3 * n3 + P == int(res.k.sum())
    res = run(0.6)  # 3/4 active is not below 0.6 of the block; 1/2 is
    assert packs == [n3] and res.work == 3 * P + 3 * n3 + P
    res = run(0.0)  # never: every step masks
    assert packs == [] and res.work == 7 * P


def test_the_compiled_k_loop_settles_as_the_eager_one(tiny_recipe):
    """Compiled frozen steps (one masked graph, the host asked every SYNC_EVERY steps) and a compiled live
    step: the same states, K and gradients as eager; the work counts every step of the full block."""
    model, x, _, inputs = _double(tiny_recipe)
    B, T, _ = x.shape
    k_max = 7
    stop = _uneven_stops(B, T, k_max, seed=2)
    stop[0] = 2  # every position has halted by step 6: the compiled loop stops at its next sync, step 8
    results, grads = [], []
    for compiled in (False, True):
        model.zero_grad()
        x = model.encoder(inputs)
        ctx = [e.context(x) for e in model.experts]
        res = settle(model.workspace, model.experts, ctx, x, torch.arange(T), HaltEach(stop), k_max, 1,
                     compiled=compiled)
        res.h.pow(2).sum().backward()
        results.append(res)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    eager, comp = results
    assert torch.equal(comp.k, eager.k)
    # not float64's 1e-10: the probe's rope angles are float32, which the compiled graph computes and
    # rounds in its own way (one step differs by ~2e-8); a wrong state would differ by ~1e-2
    close = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(comp.h, eager.h, **close)
    torch.testing.assert_close(comp.h_frozen, eager.h_frozen, **close)
    # the siren's sin(30 W h) multiplies that rounding in its first layer's gradient: compare the whole
    assert (grads[1] - grads[0]).norm() <= 1e-5 * grads[0].norm()
    assert eager.work == int(eager.k.sum())  # packed: exactly the steps taken
    assert comp.work == (k_max - 1 + 1) * B * T  # masked: every frozen step of the block, and the live one


class KeepAt(parallax.HaltingRule):
    """Never halts; marks the positions in ``mask (T,)`` after step ``at`` as where the live step starts."""

    key = "keep"

    def __init__(self, mask, at):
        self.mask, self.at = mask, at

    def update(self, raw, prev_raw, memo, k):
        if k == self.at:
            memo[self.key] = self.mask.expand(raw.shape[:2])
        return torch.zeros(raw.shape[:2], dtype=torch.bool)


def test_a_rule_can_start_the_live_step_from_an_earlier_state(tiny_recipe):
    """Positions a rule marks after step 2 take their live step from that state (K 3), as if they had
    halted there, while the others run the whole budget; the steps computed past the mark still count."""
    model, data = tiny_model(tiny_recipe)
    model.eval()
    inputs = data.batch(1)["inputs"]
    B, T = inputs.shape
    mask = torch.arange(T) % 2 == 0
    with torch.no_grad():
        kept = _settle(model, inputs, KeepAt(mask, 2), k_max=6)
        short = _settle(model, inputs, HaltAt(mask, -1), k_max=3)
        long = _settle(model, inputs, HaltAt(mask, -1), k_max=6)
    assert kept.k[:, mask].eq(3).all() and kept.k[:, ~mask].eq(6).all()
    torch.testing.assert_close(kept.h[:, mask], short.h[:, mask])
    torch.testing.assert_close(kept.h[:, ~mask], long.h[:, ~mask])
    assert kept.work == 6 * B * T  # every frozen step was computed, and the live one


class KeepPreviousAt(KeepAt):
    """Marks the state one step before step ``at`` (``memo["keep_previous"]``) for the positions in ``mask``."""

    marks_previous = True
    key = "keep_previous"


def test_a_rule_can_start_the_live_step_from_the_state_before_a_step(tiny_recipe):
    model, data = tiny_model(tiny_recipe)
    model.eval()
    inputs = data.batch(1)["inputs"]
    T = inputs.shape[1]
    mask = torch.arange(T) % 2 == 1
    with torch.no_grad():
        kept = _settle(model, inputs, KeepPreviousAt(mask, 3), k_max=6)  # judged after step 3: the state after 2
        short = _settle(model, inputs, HaltAt(mask, -1), k_max=3)
    assert kept.k[:, mask].eq(3).all() and kept.k[:, ~mask].eq(6).all()
    torch.testing.assert_close(kept.h[:, mask], short.h[:, mask])
