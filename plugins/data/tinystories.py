"""TinyStories (Eldan & Li, 2023) for next-token prediction, through Hugging Face ``datasets``.

By default the stories stream from the hub (``roneneldan/TinyStories``); ``data.files=PATH`` reads
local .txt/.jsonl copies instead. Off the network, the run stops at once with one line that shows
the ``data.files=`` override. Stories are tokenized (``byte``, or a ``bpe`` trained on the training
stories), joined with ``<|endoftext|>`` into one id stream per split, and cached on disk keyed by
data and tokenizer. The tokenizer is saved with the run (``tokenizer.json``) and restored from a
checkpoint, so evaluation and generation need no data, and the model's vocabulary is its size.

A training batch is ``batch_size`` windows of ``seq_len + 1`` ids at offsets drawn by a generator
seeded from (seed, step, rank); the validation set is the first ``val_sequences`` non-overlapping
windows (every window, when null) of the held-out stories: the last ``val_stories`` of those read,
or, with ``val_fraction``, the last fraction of each file's stories (of the stream's, from the hub),
a split fixed by the files alone. ``val_bytes`` counts the UTF-8 bytes of the validation targets,
so evaluation reports bits per byte.

Real TinyStories text, split 90/10 by story (the command each text recipe takes)::

    parallax run recipes/tinystories.yaml data.val_fraction=0.1 \
      'data.files=[../shared/data/tinystories/tinystories_v1_train_head.txt,../shared/data/tinystories/tinystories_v2_gpt4_train_head.txt]'
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

import parallax

from . import token_cache
from .stories import read_files, stream_hub
from .tokenizers import BPETokenizer, ByteTokenizer, tokenizer_from_json

TOKENIZER_FILE = "tokenizer.json"


class TinyStoriesData(parallax.DataSource):
    has_accuracy = False

    class Config(parallax.Spec):
        type: str = "tinystories"
        files: str | list[str] | None = Field(None, description="local .txt/.jsonl copies; null streams from the hub")
        dataset: str = Field("roneneldan/TinyStories", description="hub id (or a local data set folder)")
        split: str = Field("train", description="the hub split the stories are read from")
        text_field: str = Field("text", description="the record field that holds a story (.jsonl and the hub)")
        max_stories: int | None = Field(
            50000, ge=2, description="stories read (the hub streams this many); null reads every file whole")
        val_stories: int = Field(500, ge=1, description="held-out stories (at most a tenth of those read)")
        val_fraction: float | None = Field(
            None, gt=0, lt=1,
            description="held out: the last fraction of each file's stories (e.g. 0.1); replaces val_stories")
        seq_len: int = Field(128, ge=2, description="tokens per training window")
        val_sequences: int | None = Field(
            64, ge=1, description="validation windows; null: every window of the held-out stories")
        tokenizer: Literal["byte", "bpe"] = Field(
            "bpe", description="byte: UTF-8 bytes (257 ids); bpe: trained on the training stories")
        vocab_size: int = Field(4096, ge=258, description="BPE vocabulary size (bpe only)")
        cache_dir: str | None = Field(
            None, description="tokenized-data cache; null: $PARALLAX_CACHE_DIR or ~/.cache/parallax")

    def __init__(self, cfg: Config, seed: int, batch_size: int = 32):
        super().__init__(cfg, seed, batch_size)
        self.files_list = [cfg.files] if isinstance(cfg.files, str) else list(cfg.files or [])
        self.cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else token_cache.default_dir()
        self._tokenizer: parallax.Tokenizer | None = None
        self._stories: tuple[list[str], list[str]] | None = None
        self._ids: dict[str, np.ndarray] | None = None
        self.cache_hit: bool | None = None  # whether the token ids came from the cache
        self._restored = False  # the tokenizer came from a checkpoint: the data is read only when batches are

    # -- identity and loading -----------------------------------------------------------------
    def _data_key(self) -> list:
        c = self.cfg
        source = token_cache.file_identity(self.files_list) if self.files_list else [c.dataset, c.split]
        split = [c.val_stories] if c.val_fraction is None else [{"val_fraction": c.val_fraction}]
        return [source, c.text_field, c.max_stories, *split]

    def _read_stories(self) -> tuple[list[str], list[str]]:
        """(train stories, validation stories), read once."""
        if self._stories is None:
            c = self.cfg
            if self.files_list:
                parts = [read_files([f], c.text_field, None) for f in self.files_list]
                if c.max_stories:  # the first max_stories stories, file by file
                    left, kept = c.max_stories, []
                    for p in parts:
                        kept.append(p[:left])
                        left -= len(kept[-1])
                    parts = [p for p in kept if p]
            else:
                parts = [list(stream_hub(c.dataset, c.split, c.text_field, c.max_stories or 50000))]
            if sum(map(len, parts)) < 2:
                raise parallax.ConfigError(f"data.files: {sum(map(len, parts))} story read; need at least 2 "
                                           f"(one to train on, one to validate)")
            if c.val_fraction is None:
                stories = [s for p in parts for s in p]
                n_val = max(1, min(c.val_stories, len(stories) // 10))
                self._stories = (stories[:-n_val], stories[-n_val:])
            else:
                # each file's last stories: held out, at least one of each file of two or more stories
                cut = [len(p) - (min(max(round(c.val_fraction * len(p)), 1), len(p) - 1) if len(p) > 1 else 0)
                       for p in parts]
                train = [s for p, i in zip(parts, cut) for s in p[:i]]
                self._stories = (train, [s for p, i in zip(parts, cut) for s in p[i:]])
                if not self._stories[1]:
                    raise parallax.ConfigError("data.val_fraction: no story held out; give files of at least 2 stories")
        return self._stories

    @property
    def tokenizer(self) -> parallax.Tokenizer:
        if self._tokenizer is None:
            c = self.cfg
            if c.tokenizer == "byte":
                self._tokenizer = ByteTokenizer()
            else:
                path = self.cache / f"bpe-{token_cache.key(self._data_key(), c.vocab_size)}.json"
                cached = token_cache.load_text(path)
                if cached is not None:
                    self._tokenizer = tokenizer_from_json(cached, str(path), "delete this cached file; it is rebuilt")
                else:
                    self._tokenizer = BPETokenizer.train(self._read_stories()[0], c.vocab_size)
                    token_cache.save_text(path, self._tokenizer.to_json())
        return self._tokenizer

    def _encode(self, stories: list[str]) -> np.ndarray:
        """Stories -> one id stream, each story followed by <|endoftext|>."""
        tok = self.tokenizer
        encoded = tok.encode_batch(stories) if hasattr(tok, "encode_batch") else [tok.encode(s) for s in stories]
        flat = [i for ids in encoded for i in (*ids, tok.eos_id)]
        return np.asarray(flat, dtype=np.uint16 if tok.vocab_size <= 65536 else np.int32)

    def ids(self) -> dict[str, np.ndarray]:
        """{"train": (N,), "val": (M,)} token ids, from the cache when this data and tokenizer were seen before."""
        if self._ids is None:
            path = self.cache / f"ids-{token_cache.key(self._data_key(), self.tokenizer.to_json())}.npz"
            self._ids = token_cache.load_arrays(path)
            self.cache_hit = self._ids is not None
            if self._ids is None:
                train, val = self._read_stories()
                self._ids = {"train": self._encode(train), "val": self._encode(val)}
                token_cache.save_arrays(path, self._ids)
            if len(self._ids["train"]) < self.cfg.seq_len + 2:
                raise parallax.ConfigError(
                    f"data.files: the training split of these stories holds {len(self._ids['train'])} tokens, "
                    f"fewer than data.seq_len + 2 ({self.cfg.seq_len + 2}); give more text or lower data.seq_len"
                )
        return self._ids

    # -- the DataSource contract ----------------------------------------------------------------
    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        return self.tokenizer.vocab_size

    @property
    def info(self) -> parallax.DataInfo:
        if not self._restored:
            self.ids()  # a fresh run reads (or finds cached) its data now, so a bad file fails before training starts
        return parallax.DataInfo(vocab_size=self.tokenizer.vocab_size)

    def declared_info(self) -> parallax.DataInfo:
        """The vocabulary the options set: 257 bytes, or ``vocab_size`` for a BPE (at most; a small text
        may learn fewer merges). Local files must exist; nothing is read or downloaded."""
        for f in self.files_list:
            if not Path(f).expanduser().exists():
                raise parallax.ConfigError(f"data.files: {f} does not exist; give .txt/.jsonl files, "
                                           f"or drop data.files to stream from the hub")
        vocab = ByteTokenizer.vocab_size if self.cfg.tokenizer == "byte" else self.cfg.vocab_size
        return parallax.DataInfo(vocab_size=vocab)

    def files(self) -> dict[str, bytes]:
        return {TOKENIZER_FILE: self.tokenizer.to_json().encode("utf-8")}

    def restore(self, path) -> None:
        f = Path(path) / TOKENIZER_FILE
        if not f.is_file():
            raise parallax.CheckpointError(f"{path}: no {TOKENIZER_FILE}; "
                                           "this checkpoint was not written by a text run")
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise parallax.CheckpointError(f"{f}: not a tokenizer (not UTF-8 text); "
                                           "use the tokenizer.json the run saved") from None
        self._tokenizer = tokenizer_from_json(text, str(f))
        self._restored = True

    def batch(self, step: int, rank: int = 0) -> dict[str, torch.Tensor]:
        train = self.ids()["train"]
        L = self.cfg.seq_len
        gen = torch.Generator().manual_seed(hash((self.seed, step, rank)) & 0x7FFFFFFF)
        starts = torch.randint(0, len(train) - L - 1, (self.batch_size,), generator=gen).numpy()  # (B,)
        win = torch.from_numpy(np.stack([train[s : s + L + 1] for s in starts]).astype(np.int64))  # (B,L+1)
        return {"inputs": win[:, :-1], "targets": win[:, 1:]}

    def val_bytes(self) -> int:
        """UTF-8 bytes that the validation targets stand for (each story separator counts one)."""
        lengths = np.asarray(self.tokenizer.byte_lengths(), dtype=np.int64)  # (V,)
        return int(sum(lengths[b["targets"].numpy()].sum() for b in self.val_batches()))

    def val_batches(self, batch_size: int | None = None):
        val = self.ids()["val"]
        L = min(self.cfg.seq_len, len(val) - 1)
        n = min(self.cfg.val_sequences or len(val), (len(val) - 1) // L)
        win = torch.from_numpy(np.stack([val[i * L : i * L + L + 1] for i in range(n)]).astype(np.int64))  # (n,L+1)
        bs = batch_size or self.batch_size
        for i in range(0, n, bs):
            yield {"inputs": win[i : i + bs, :-1], "targets": win[i : i + bs, 1:]}
