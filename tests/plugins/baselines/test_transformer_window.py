"""The transformer's observation window (``window``): a causal token shift over the embeddings, off by
default, whose incremental ``step`` equals ``forward``; the dual-track model takes it too."""
from __future__ import annotations

import torch

from parallax import DataInfo
from parallax_plugins.baselines.dualtrack import DualTrack
from parallax_plugins.baselines.transformer import TokenShift, Transformer

V = 23


def small(**kw) -> Transformer:
    opts = dict(n_layer=2, n_head=4, n_kv_heads=2, n_embd=32)
    opts.update(kw)
    return Transformer(Transformer.Config(**opts), DataInfo(vocab_size=V)).eval()


def test_off_by_default_and_costs_two_maps_at_three():
    off, on = small(), small(window=3)
    assert off.shift is None and on.shift is not None
    n = sum(p.numel() for p in off.parameters())
    assert sum(p.numel() for p in on.parameters()) == n + 2 * 32 * 32  # W_1, W_2: (d,d) each


def test_token_shift_is_the_window_sum_by_hand():
    shift = TokenShift(8, 3)
    e = torch.randn(2, 5, 8)
    w1, w2 = (tap.weight for tap in shift.taps)
    want = e.clone()
    want[:, 1:] += e[:, :-1] @ w1.T
    want[:, 2:] += e[:, :-2] @ w2.T
    torch.testing.assert_close(shift(e), want)


def test_window_sees_exactly_the_previous_tokens_of_a_one_layer_model():
    """With one block the logits at t depend on tokens <= t only (causal), and the window reaches
    back through the token shift, not only through attention."""
    model = small(n_layer=1, window=3)
    ids = torch.randint(0, V, (2, 10))
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % V
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_incremental_step_equals_forward_with_a_window():
    model = small(n_layer=3, window=3)
    with torch.no_grad():
        for tap in model.shift.taps:
            tap.weight.normal_(0, 0.3)  # a window that matters
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        full = model(ids).logits  # (B,T,V)
    cache = None
    for t in range(ids.shape[1]):
        logits, cache = model.step(ids[:, t : t + 1], cache)
        torch.testing.assert_close(logits[:, -1], full[:, t], rtol=1e-4, atol=1e-5)
    assert len(cache.shift) == 2 and cache.pos == ids.shape[1]


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
