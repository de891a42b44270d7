"""The dual-track swap model (seed 002): the exchange between passes is what the options say it is."""
from __future__ import annotations

import pytest
import torch

from parallax import DataInfo
from parallax_plugins.baselines import transformer
from parallax_plugins.baselines.dualtrack import DualTrack

V = 19


def small(**kw) -> DualTrack:
    opts = dict(n_layer=2, n_head=2, n_kv_heads=1, n_embd=16)
    opts.update(kw)
    return DualTrack(DualTrack.Config(**opts), DataInfo(vocab_size=V)).eval()


def by_hand(model: DualTrack, ids: torch.Tensor, compose) -> torch.Tensor:
    """head(norm(compose(A, B, x))) from the model's own modules, A and B one pass of each track."""
    T = ids.shape[1]
    cos, sin = transformer.rope_angles(torch.arange(T), model.cfg.n_embd // model.cfg.n_head)
    x = model.tok(ids)

    def run(track, h):
        for blk in track:
            h, _ = blk(h, cos, sin)
        return h

    def A(h):
        return run(model.track_a, h)

    def B(h):
        return run(model.track_b, h)

    return model.logits(model.norm(compose(A, B, x)))


IDS = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_defaults_are_the_seed_table():
    cfg = DualTrack.Config()
    assert (cfg.n_layer, cfg.n_head, cfg.n_kv_heads, cfg.n_embd) == (6, 4, 2, 512)
    assert (cfg.num_loops, cfg.use_swap, cfg.norm_eps, cfg.dropout) == (2, True, 1e-5, 0.0)


@torch.no_grad()
def test_one_loop_is_a_parallel_ensemble():
    model = small(num_loops=1)
    expected = by_hand(model, IDS, lambda A, B, x: A(x) + B(x))
    torch.testing.assert_close(model(IDS).logits, expected)


@torch.no_grad()
def test_two_loops_without_swap_feed_each_track_its_own_output():
    model = small(num_loops=2, use_swap=False)
    expected = by_hand(model, IDS, lambda A, B, x: A(A(x) + x) + B(B(x) + x))
    torch.testing.assert_close(model(IDS).logits, expected)


@torch.no_grad()
def test_two_loops_with_swap_exchange_the_track_outputs():
    model = small(num_loops=2, use_swap=True)
    expected = by_hand(model, IDS, lambda A, B, x: A(B(x) + x) + B(A(x) + x))
    torch.testing.assert_close(model(IDS).logits, expected)


@torch.no_grad()
def test_three_loops_with_swap_exchange_twice():
    model = small(num_loops=3)

    def compose(A, B, x):
        a1, b1 = A(x), B(x)
        a2, b2 = A(b1 + x), B(a1 + x)
        return A(b2 + x) + B(a2 + x)

    torch.testing.assert_close(model(IDS).logits, by_hand(model, IDS, compose))


@torch.no_grad()
def test_swapping_changes_the_output():
    swap = small(use_swap=True)
    no_swap = small(use_swap=False)
    no_swap.load_state_dict(swap.state_dict())  # same weights, only the exchange differs
    assert not torch.allclose(swap(IDS).logits, no_swap(IDS).logits, atol=1e-4)


@torch.no_grad()
def test_changing_a_later_token_leaves_earlier_logits_unchanged():
    model = small(num_loops=3)
    t = 4
    changed = IDS.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 1) % V
    a, b = model(IDS).logits, model(changed).logits
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_tracks_reuse_the_transformer_block_and_have_separate_weights():
    model = small()
    assert all(isinstance(b, transformer.Block) for b in [*model.track_a, *model.track_b])
    assert model.track_a[0].attn.wq.weight.data_ptr() != model.track_b[0].attn.wq.weight.data_ptr()
    assert model.head is None  # tied: the head reads the embedding table


def test_dropout_is_applied_only_in_training():
    model = small(dropout=0.5)
    with torch.no_grad():
        model.eval()
        e1, e2 = model(IDS).logits, model(IDS).logits
        model.train()
        t1, t2 = model(IDS).logits, model(IDS).logits
    torch.testing.assert_close(e1, e2)
    assert not torch.allclose(t1, t2)


def test_dropout_must_be_below_one():
    with pytest.raises(ValueError):
        DualTrack.Config(dropout=1.0)


def test_dualtrack_takes_the_window():
    off = DualTrack(DualTrack.Config(n_layer=1, n_head=2, n_kv_heads=1, n_embd=16), DataInfo(vocab_size=V)).eval()
    on = DualTrack(DualTrack.Config(n_layer=1, n_head=2, n_kv_heads=1, n_embd=16, window=3), DataInfo(vocab_size=V))
    assert off.shift is None and len(on.shift.taps) == 2
    on.load_state_dict(off.state_dict(), strict=False)
    with torch.no_grad():
        for tap in on.shift.taps:
            tap.weight.zero_()
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(on.eval()(ids).logits, off(ids).logits)  # zero taps: the model without a window
        on.shift.taps[0].weight.normal_(0, 0.3)
        assert not torch.allclose(on(ids).logits, off(ids).logits)
