"""Small TinyStories-style corpora and a tiny text recipe, written by the tests themselves."""
from __future__ import annotations

from pathlib import Path

import yaml

from parallax.testing.recipes import tiny_recipe_data

NAMES = ["Lily", "Tom", "Mia", "Ben", "Zoë"]
THINGS = ["ball", "kite", "red hat", "big box", "café cake"]


def stories(n: int) -> list[str]:
    """n short stories; a few non-ASCII characters so that byte-level decoding is exercised."""
    out = []
    for i in range(n):
        a, b, t = NAMES[i % 5], NAMES[(i + 2) % 5], THINGS[(i * 3) % 5]
        out.append(f"Once upon a time, {a} found a {t}. {a} said, \"Look, {b}!\"\n{b} smiled. They played all day.")
    return out


def write_txt(path: Path, n: int = 40) -> Path:
    path.write_text("\n<|endoftext|>\n".join(stories(n)), encoding="utf-8")
    return path


def text_recipe(tmp_path: Path, files, **data) -> Path:
    """The tiny CWS on tinystories data read from ``files``; the token cache lives in tmp_path."""
    recipe = tiny_recipe_data(tmp_path / "run")
    recipe["data"] = {"type": "tinystories", "files": [str(f) for f in files], "seq_len": 16, "val_sequences": 4,
                      "tokenizer": "byte", "cache_dir": str(tmp_path / "cache"), **data}
    recipe["train"]["max_steps"] = 3
    path = tmp_path / "text.yaml"
    path.write_text("# parallax run text.yaml\n" + yaml.safe_dump(recipe, sort_keys=False))
    return path
