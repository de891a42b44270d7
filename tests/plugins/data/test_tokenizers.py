"""Tokenizers: exact round trips (Unicode included), the separator token, and JSON persistence."""
from __future__ import annotations

import pytest

from parallax_plugins.data.tokenizers import EOS, BPETokenizer, ByteTokenizer, tokenizer_from_json

from .text_helpers import stories

SAMPLES = ["", "Once upon a time.", "naïve café, 日本語, emoji 🙂 and ∑ x²", "tabs\tand\nnewlines\r\n", f"one{EOS}two"]


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_byte_ids_are_utf8_bytes_and_eos_is_special():
    tok = ByteTokenizer()
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.encode(f"a{EOS}b") == [ord("a"), tok.eos_id, ord("b")]


def test_bpe_round_trip_and_vocabulary():
    tok = BPETokenizer.train(stories(60), vocab_size=300)
    assert 258 <= tok.vocab_size <= 300
    assert tok.eos_id is not None
    for text in SAMPLES + stories(3):
        assert tok.decode(tok.encode(text)) == text
    # merges learned: a frequent word is shorter in BPE ids than in bytes
    assert len(tok.encode("Once upon a time")) < len("Once upon a time")


def test_json_round_trip_gives_the_same_ids():
    bpe = BPETokenizer.train(stories(30), vocab_size=280)
    for tok in (ByteTokenizer(), bpe):
        again = tokenizer_from_json(tok.to_json())
        assert again.encode(SAMPLES[2]) == tok.encode(SAMPLES[2])
        assert again.vocab_size == tok.vocab_size
