"""The transformer baseline: causal, its KV-cached ``step`` matches full recompute, it needs a vocabulary,
and its observation window (``window``) is a causal token shift whose ``step`` equals ``forward``."""
from __future__ import annotations

import pytest
import torch

import parallax
from parallax import ConfigError, DataInfo
from parallax.registry import get_registry
from parallax_plugins.baselines.transformer import TokenShift, Transformer

V = 23


def small(**kw) -> Transformer:
    opts = dict(n_layer=2, n_head=4, n_kv_heads=2, n_embd=32)
    opts.update(kw)
    return Transformer(Transformer.Config(**opts), DataInfo(vocab_size=V)).eval()


def logits_with_one_token_changed(model: Transformer, length: int, at: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (2,length,V) of random tokens, and of the same tokens with the one at ``at`` changed."""
    ids = torch.randint(0, V, (2, length))
    changed = ids.clone()
    changed[:, at] = (changed[:, at] + 1) % V
    with torch.no_grad():
        return model(ids).logits, model(changed).logits


def test_forward_shapes_and_no_k():
    out = small()(torch.randint(0, V, (3, 9)))
    assert out.logits.shape == (3, 9, V)
    assert out.k is None


def test_changing_a_later_token_leaves_earlier_logits_unchanged():
    t = 6
    a, b = logits_with_one_token_changed(small(), 12, t + 1)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def covariance(**kw) -> Transformer:
    """A covariance-attention transformer whose probes W_r are non-zero, so the correction acts."""
    model = small(attention="covariance", block=4, **kw)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.wr.weight.normal_(0, 0.3)
    return model


def test_covariance_attention_starts_as_softmax_attention():
    soft, cov = small(), small(attention="covariance")
    missing, unexpected = cov.load_state_dict(soft.state_dict(), strict=False)
    assert sorted(missing) == [f"blocks.{i}.attn.wr.weight" for i in range(2)] and not unexpected
    assert all(blk.attn.wr.weight.abs().sum() == 0 for blk in cov.blocks)  # W_r = 0 at initialisation
    ids = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(cov(ids).logits, soft(ids).logits, rtol=1e-4, atol=1e-5)
        for blk in cov.blocks:
            blk.attn.wr.weight.normal_(0, 0.3)
        assert not torch.allclose(cov(ids).logits, soft(ids).logits, atol=1e-3)  # the correction acts


def test_covariance_attention_is_causal():
    a, b = logits_with_one_token_changed(covariance(), 11, 7)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7], b[:, 7])


@pytest.mark.parametrize("variant", ["softmax", "covariance"])
def test_greedy_incremental_decoding_equals_full_recompute(variant):
    model = small(n_layer=3) if variant == "softmax" else covariance(n_layer=3)
    prompt = torch.randint(0, V, (2, 3))
    # incremental: feed the prompt one token at a time, then 12 greedy tokens through the cache
    cache, logits = None, None
    for i in range(prompt.shape[1]):
        logits, cache = model.step(prompt[:, i : i + 1], cache)
    seq = prompt
    for _ in range(12):
        nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B,1)
        with torch.no_grad():
            full = model(seq).logits[:, -1]  # (B,V): recomputed from scratch
        torch.testing.assert_close(logits[:, -1], full, rtol=1e-4, atol=1e-5)
        assert torch.equal(nxt, full.argmax(-1, keepdim=True))
        seq = torch.cat([seq, nxt], dim=1)
        logits, cache = model.step(nxt, cache)
    assert cache.pos == seq.shape[1]
    assert cache.layers[0][0].shape == (2, 2, seq.shape[1], 8)  # (B,G,T,hd)


def test_tied_head_shares_the_embedding():
    tied, untied = small(), small(tie=False)
    assert tied.head is None
    h = torch.randn(1, 3, 32)
    torch.testing.assert_close(tied.logits(h), h @ tied.tok.weight.T)
    n = sum(p.numel() for p in tied.parameters())
    assert sum(p.numel() for p in untied.parameters()) == n + V * 32


def test_default_mlp_hidden_is_eight_thirds_rounded_up():
    assert small().blocks[0].mlp.w1.out_features == 88  # 8/3 * 32 = 85.3 -> 88
    assert small(mlp_hidden=40).blocks[0].mlp.w1.out_features == 40


def test_without_a_vocabulary_it_raises_a_config_error():
    with pytest.raises(parallax.ConfigError, match="vocabulary"):
        Transformer(Transformer.Config(n_head=4, n_kv_heads=2, n_embd=32), DataInfo(num_classes=10))


def test_incremental_decoding_needs_the_token_embedding():
    info = DataInfo(num_classes=3, input_shape=(1, 4, 4))
    reg = get_registry()
    enc = reg.get("encoders", "image").Config(type="image", patch=2)
    dec = reg.get("decoders", "classifier").Config(type="classifier")
    model = Transformer(Transformer.Config(n_layer=1, n_embd=16, n_head=2, n_kv_heads=1, encoder=enc, decoder=dec),
                        info)
    assert model.tok is None and model.head is None
    assert model(torch.randn(2, 1, 4, 4)).logits.shape == (2, 3)  # 4 patches in, one class row per image out
    with pytest.raises(ConfigError, match="incremental decoding needs the token embedding"):
        model.step(torch.zeros(2, 1, dtype=torch.long))


# -- the observation window (model.window): a causal token shift over the embeddings, off by default
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
    a, b = logits_with_one_token_changed(small(n_layer=1, window=3), 10, 6)
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
