"""An on-disk cache of tokenized text, keyed by the data and the tokenizer.

Tokenizing (and training a BPE tokenizer) over a large corpus takes minutes; a second run on the
same data with the same tokenizer reads ``ids-<key>.npz`` instead. The key hashes what identifies
the data (file paths with their size and modification time, or the hub data set, split and
limits) and the tokenizer (its full JSON document), so any change to either makes a new entry.
Entries are written to a temporary file and renamed, so a crash never leaves a torn one behind.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


def default_dir() -> Path:
    return Path(os.environ.get("PARALLAX_CACHE_DIR", Path.home() / ".cache" / "parallax")) / "tokens"


def key(*parts) -> str:
    """A short hex digest of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_identity(files: list[str]) -> list:
    """What identifies local files cheaply: resolved path, size and modification time of each."""
    out = []
    for f in files:
        p = Path(f).expanduser().resolve()
        st = p.stat() if p.exists() else None
        out.append([str(p), st.st_size if st else None, st.st_mtime_ns if st else None])
    return out


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def load_text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def save_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError):  # a foreign or damaged file: rebuild it
        return None


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _write_atomic(path, write)
