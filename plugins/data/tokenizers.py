"""Tokenizers for text data: ``byte`` (UTF-8 bytes, needs nothing) and ``bpe`` (byte-level BPE
trained on the training text with the Hugging Face ``tokenizers`` library).

Both map every string to ids and back exactly: ``decode(encode(s)) == s``, for any Unicode text.
Both know one special token, ``<|endoftext|>``, which separates stories. Both serialise to one
JSON document (``to_json``/``tokenizer_from_json``): the run keeps it as ``tokenizer.json``.
``byte_lengths()`` gives the UTF-8 bytes each id stands for (bits per byte are measured over them);
the ``<|endoftext|>`` separator counts as one byte, the line break between two stories.
"""
from __future__ import annotations

import json

import parallax

EOS = "<|endoftext|>"


class ByteTokenizer(parallax.Tokenizer):
    """Ids 0..255 are the UTF-8 bytes; id 256 is ``<|endoftext|>``."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(EOS)):
            if i:
                ids.append(self.eos_id)
            ids.extend(part.encode("utf-8"))
        return ids

    def decode(self, ids: list[int]) -> str:
        # decode each run of bytes as a whole: a character may span several ids
        out, run = [], bytearray()
        for i in ids:
            if i == self.eos_id:
                out.append(run.decode("utf-8", errors="replace") + EOS)
                run = bytearray()
            else:
                run.append(i)
        return "".join(out) + run.decode("utf-8", errors="replace")

    def byte_lengths(self) -> list[int]:
        return [1] * self.vocab_size  # 256 bytes, and the separator as one

    def to_json(self) -> str:
        return json.dumps({"parallax_tokenizer": "byte", "vocab_size": self.vocab_size})


class BPETokenizer(parallax.Tokenizer):
    """Byte-level BPE: the text's bytes are the base alphabet, so no string is out of vocabulary."""

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eos_id = tok.token_to_id(EOS)

    @classmethod
    def train(cls, texts, vocab_size: int) -> BPETokenizer:
        """Learn merges from an iterable of strings until the vocabulary holds ``vocab_size`` entries."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def byte_lengths(self) -> list[int]:
        # a byte-level token is written in an alphabet of one character per byte (GPT-2's byte-to-unicode map)
        lengths = [0] * self.vocab_size
        for token, i in self.tok.get_vocab(with_added_tokens=True).items():
            lengths[i] = 1 if token == EOS else len(token)
        return lengths

    def to_json(self) -> str:
        return self.tok.to_str()


def tokenizer_from_json(text: str, where: str = "tokenizer.json",
                        fix: str = "use the tokenizer.json the run saved") -> parallax.Tokenizer:
    """The tokenizer a ``to_json`` document describes; ``fix`` ends the error line if it is not one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise parallax.CheckpointError(f"{where}: not a tokenizer (invalid JSON); {fix}") from None
    if isinstance(data, dict) and data.get("parallax_tokenizer") == "byte":
        return ByteTokenizer()
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise parallax.ConfigError(f"{where}: a BPE tokenizer needs the `tokenizers` package; "
                                   "pip install 'parallax-cws[text]'") from None
    try:
        return BPETokenizer(Tokenizer.from_str(text))
    except Exception as e:  # tokenizers raises a generic Exception for a malformed document
        raise parallax.CheckpointError(f"{where}: not a readable tokenizer ({str(e).splitlines()[0]}); {fix}") from None
