"""examples/make_stories.py: the TinyStories-style text behind docs/results.md is reproducible."""
from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

from parallax_plugins.data.stories import read_file

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "make_stories.py"
spec = importlib.util.spec_from_file_location("make_stories", SCRIPT)
make_stories = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_stories)


def test_same_seed_same_text_other_seed_other_text():
    assert make_stories.make_stories(50, 0) == make_stories.make_stories(50, 0)
    assert make_stories.make_stories(50, 0) != make_stories.make_stories(50, 1)


def test_the_documented_corpus_has_the_documented_digest():
    text = make_stories.make_stories(4000, 0).encode()
    assert len(text) == 1_246_636
    assert hashlib.sha256(text).hexdigest().startswith("4f3ea0ca")


def test_the_cli_writes_stories_that_the_text_data_source_reads(tmp_path):
    out = tmp_path / "stories.txt"
    subprocess.run([sys.executable, str(SCRIPT), "--n", "25", "--seed", "3", "--out", str(out)], check=True)
    stories = read_file(out, "text")
    assert len(stories) == 25
    assert all(s.startswith("Once upon a time, there was a little ") for s in stories)
    assert out.read_text() == make_stories.make_stories(25, 3)
