"""Reading TinyStories-style text: local .txt/.jsonl files, or a ``datasets`` stream from the hub.

A local file holds one story per record: a .jsonl line is a JSON object with the text field (or a
JSON string); a .txt file is split on ``<|endoftext|>`` when it contains one, else one story per
line. Every problem with a file (missing, unreadable, not UTF-8, empty, a bad JSON line) is a
one-line ``ConfigError`` that names the file.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import parallax

from .hub import open_dataset
from .tokenizers import EOS

OFFLINE_FIX = "train offline on local copies with data.files=PATH (.txt or .jsonl, one story per record)"


def read_file(path: Path, text_field: str) -> list[str]:
    where = f"data.files: {path}"
    if not path.exists():
        raise parallax.ConfigError(f"{where} does not exist; give local .txt/.jsonl files (data.files=PATH)")
    if not path.is_file():
        raise parallax.ConfigError(f"{where} is not a file; give .txt/.jsonl files (data.files=PATH)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise parallax.ConfigError(f"{where} is not UTF-8 text (invalid byte at offset {e.start}); "
                                   "convert it to UTF-8") from None
    if path.suffix in (".jsonl", ".json"):
        stories = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise parallax.ConfigError(f"{where}: line {n} is not JSON; "
                                           "a .jsonl file holds one JSON object per line") from None
            story = rec if isinstance(rec, str) else rec.get(text_field) if isinstance(rec, dict) else None
            if not isinstance(story, str):
                raise parallax.ConfigError(f"{where}: line {n} has no '{text_field}' string; set data.text_field")
            stories.append(story)
    elif EOS in text:
        stories = [s.strip() for s in text.split(EOS)]
    else:
        stories = text.splitlines()
    stories = [s for s in stories if s.strip()]
    if not stories:
        raise parallax.ConfigError(f"{where} holds no stories (it is empty); give a file with text in it")
    return stories


def read_files(files: list[str], text_field: str, limit: int | None) -> list[str]:
    stories: list[str] = []
    for f in files:
        stories += read_file(Path(f).expanduser(), text_field)
        if limit and len(stories) >= limit:
            break
    return stories[:limit] if limit else stories


def stream_hub(dataset: str, split: str, text_field: str, limit: int) -> Iterator[str]:
    ds = open_dataset(dataset, split, "data.dataset", OFFLINE_FIX)
    for i, rec in enumerate(ds):
        if i >= limit:
            break
        if text_field not in rec:
            raise parallax.ConfigError(f"data.text_field: '{dataset}' records have fields {sorted(rec)}, "
                                       f"not '{text_field}'")
        yield rec[text_field]
