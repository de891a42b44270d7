"""Token encoder and motor decoder: incremental == parallel, causality, window bound, tying."""
from __future__ import annotations

import pytest
import torch

import parallax
from parallax.registry import get_registry
from parallax_plugins.decoders import layer_windows

D, V = 16, 11
INFO = parallax.DataInfo(vocab_size=V)


def make(kind, name, **opts):
    cls = get_registry().get(kind, name)
    return cls(cls.Config(type=name, **opts), D, INFO).eval()


def test_token_encoder_step_equals_forward():
    enc = make("encoders", "token", window=3)
    tokens = torch.randint(0, V, (2, 8))
    full = enc(tokens)
    outs, cache = [], None
    for t in range(8):
        x, cache = enc.step(tokens[:, t : t + 1], cache)
        outs.append(x)
    torch.testing.assert_close(torch.cat(outs, 1), full)


def test_token_encoder_window_is_its_only_context():
    enc = make("encoders", "token", window=2)
    a = torch.randint(0, V, (1, 6))
    b = a.clone()
    b[0, 0] = (a[0, 0] + 1) % V
    # position 2 sees tokens 1..2 only
    torch.testing.assert_close(enc(a)[:, 2:], enc(b)[:, 2:])
    assert not torch.allclose(enc(a)[:, 1], enc(b)[:, 1])


@pytest.mark.parametrize("context,layers", [(16, 2), (5, 2), (7, 3), (1, 1)])
def test_layer_windows_add_up_to_context(context, layers):
    w = layer_windows(context, layers)
    assert len(w) == layers and sum(x - 1 for x in w) + 1 == context


def test_motor_decoder_reads_at_most_context_states():
    dec = make("decoders", "motor", context=5, layers=2, heads=2)
    h = torch.randn(1, 12, D)
    h2 = h.clone()
    h2[:, 6] += 3.0  # affects outputs 6..10 only (receptive field 5)
    a, b = dec(h), dec(h2)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    torch.testing.assert_close(a[:, 11:], b[:, 11:])
    assert not torch.allclose(a[:, 10], b[:, 10])


def test_motor_decoder_step_equals_forward():
    dec = make("decoders", "motor", context=6, layers=2, heads=2)
    h = torch.randn(2, 14, D)
    full = dec(h)
    outs, cache = [], None
    for t in range(14):
        y, cache = dec.step(h[:, t : t + 1], cache)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-4, atol=1e-5)


def test_decoder_head_is_tied_to_encoder_table():
    enc, dec = make("encoders", "token"), make("decoders", "motor", context=4, heads=2)
    dec.tie(enc.tied_weight)
    names = {n for n, _ in dec.named_parameters()}
    assert not any(n.startswith("head") for n in names)
    h = torch.randn(1, 3, D)
    before = dec(h)
    with torch.no_grad():
        enc.embed.weight.mul_(2.0)
    assert not torch.allclose(before, dec(h))
