"""TinyStories data: local files through the real loading code, file errors, the token cache,
the tokenizer saved with the run, deterministic batches, and the offline hub failure."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from parallax.cli.main import main
from parallax.registry import get_registry
from parallax_plugins.data import tinystories as ts
from parallax_plugins.data.stories import read_file

from .text_helpers import stories, text_recipe, write_txt

REPO = Path(__file__).resolve().parents[3]


def make(tmp_path, files, **cfg):
    cfg = {"seq_len": 8, "val_sequences": 3, "tokenizer": "byte", "cache_dir": str(tmp_path / "cache"), **cfg}
    c = ts.TinyStoriesData.Config(files=[str(f) for f in files], **cfg)
    return ts.TinyStoriesData(c, seed=0, batch_size=4)


def test_reads_txt_jsonl_and_lines(tmp_path):
    txt = write_txt(tmp_path / "a.txt", 5)
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": s}) for s in stories(4)) + "\n", encoding="utf-8")
    lines = tmp_path / "c.txt"
    lines.write_text("first story\n\nsecond story\n", encoding="utf-8")
    assert read_file(txt, "text") == stories(5)
    assert read_file(jsonl, "text") == stories(4)
    assert read_file(lines, "text") == ["first story", "second story"]


def test_ids_stream_and_batches(tmp_path):
    data = make(tmp_path, [write_txt(tmp_path / "a.txt", 30)])
    ids = data.ids()
    tok = data.tokenizer
    train_text = tok.decode(ids["train"].tolist())
    assert train_text.split("<|endoftext|>")[0] == stories(30)[0]
    assert data.info.vocab_size == 257
    b1, b2 = data.batch(5), data.batch(5)
    assert b1["inputs"].shape == (4, 8) and torch.equal(b1["inputs"], b2["inputs"])
    assert torch.equal(b1["inputs"][:, 1:], b1["targets"][:, :-1])  # targets are the next ids
    assert not torch.equal(data.batch(6)["inputs"], b1["inputs"])
    val = list(data.val_batches())
    assert sum(len(v["inputs"]) for v in val) == 3


def test_cache_is_reused_on_a_second_run(tmp_path, monkeypatch):
    f = write_txt(tmp_path / "a.txt", 30)
    first = make(tmp_path, [f], tokenizer="bpe", vocab_size=300)
    ids = first.ids()
    assert first.cache_hit is False
    assert len(list((tmp_path / "cache").glob("ids-*.npz"))) == 1
    assert len(list((tmp_path / "cache").glob("bpe-*.json"))) == 1

    def no_reading(*a, **k):
        raise AssertionError("the second run read or tokenized the stories again")

    monkeypatch.setattr(ts, "read_files", no_reading)
    monkeypatch.setattr(ts.TinyStoriesData, "_encode", no_reading)
    second = make(tmp_path, [f], tokenizer="bpe", vocab_size=300)
    again = second.ids()
    assert second.cache_hit is True
    assert (again["train"] == ids["train"]).all() and second.tokenizer.to_json() == first.tokenizer.to_json()
    # another tokenizer is another cache entry
    monkeypatch.undo()
    make(tmp_path, [f], tokenizer="byte").ids()
    assert len(list((tmp_path / "cache").glob("ids-*.npz"))) == 2


def test_run_saves_the_tokenizer_and_resume_restores_it(tmp_path, capsys):
    recipe = text_recipe(tmp_path, [write_txt(tmp_path / "a.txt")], tokenizer="bpe", vocab_size=300)
    assert main(["run", str(recipe)]) == 0
    run = tmp_path / "run"
    saved = (run / "tokenizer.json").read_text()
    assert (run / "step-00000003" / "tokenizer.json").read_text() == saved
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_perplexity"] == pytest.approx(2.718281828 ** summary["val_loss"], rel=1e-6)
    # restore() takes the checkpoint's tokenizer, not a new one trained on other data
    other = make(tmp_path, [write_txt(tmp_path / "b.txt", 12)], tokenizer="bpe", vocab_size=280)
    other.restore(run / "step-00000003")
    assert other.tokenizer.to_json() == saved


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("empty", "holds no stories"),
    ("latin1", "is not UTF-8"),
    ("badjson", "line 1 is not JSON"),
])
def test_file_errors_are_one_line(tmp_path, capsys, case, expected):
    f = tmp_path / ("x.jsonl" if case == "badjson" else "x.txt")
    if case == "empty":
        f.write_text("\n\n")
    elif case == "latin1":
        f.write_bytes("caf\xe9 story".encode("latin-1"))
    elif case == "badjson":
        f.write_text("{not json\n")
    recipe = text_recipe(tmp_path, [f])
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("parallax: error: data.files: ") and str(f) in err and expected in err


def test_too_little_text_for_seq_len(tmp_path, capsys):
    f = tmp_path / "x.txt"
    f.write_text("a\nb\nc\n")
    assert main(["run", str(text_recipe(tmp_path, [f]))]) == 2
    assert "data.seq_len" in capsys.readouterr().err


def test_hub_path_streams_a_local_dataset_folder(tmp_path):
    """The hub code path (datasets.load_dataset, streaming) on a local data set folder."""
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": s}) for s in stories(20)) + "\n")
    c = ts.TinyStoriesData.Config(dataset=str(folder), seq_len=8, tokenizer="byte", max_stories=12,
                                  cache_dir=str(tmp_path / "c"))
    data = ts.TinyStoriesData(c, seed=0, batch_size=2)
    train, val = data._read_stories()
    assert train + val == stories(12) and len(val) == 1


def _run_offline(tmp_path, **env) -> tuple[subprocess.CompletedProcess, float]:
    full = {**os.environ, "PARALLAX_CACHE_DIR": str(tmp_path / "cache"), **env}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "parallax", "run", str(REPO / "recipes" / "tinystories.yaml"),
                           f"out_dir={tmp_path / 'run'}"], capture_output=True, text=True, env=full, timeout=60)
    return proc, time.time() - t0


@pytest.mark.parametrize("env", [
    {"HF_HUB_OFFLINE": "1"},
    {"HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"},  # nothing listens on port 9
])
def test_offline_hub_fails_fast_in_one_line(tmp_path, env):
    proc, seconds = _run_offline(tmp_path, **env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "Hugging Face hub" in lines[0] and "data.files=PATH" in lines[0]
    assert seconds < 30


def test_registered_and_datasets_imported_lazily():
    assert get_registry().get("data_sources", "tinystories") is ts.TinyStoriesData
    code = "import parallax.registry as r; r.get_registry(); import sys; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


@pytest.mark.parametrize("content, expected", [(b"\xff\xfe", "not UTF-8"), (b"{not json", "invalid JSON")])
def test_a_damaged_saved_tokenizer_is_one_error(tmp_path, content, expected):
    step = tmp_path / "step-00000001"
    step.mkdir()
    (step / ts.TOKENIZER_FILE).write_bytes(content)
    data = make(tmp_path, [write_txt(tmp_path / "a.txt")], tokenizer="byte")
    with pytest.raises(ts.parallax.CheckpointError, match=expected):
        data.restore(step)


def test_a_damaged_cached_tokenizer_says_to_delete_it(tmp_path):
    f = write_txt(tmp_path / "a.txt")
    make(tmp_path, [f], tokenizer="bpe", vocab_size=300).ids()
    cached = next((tmp_path / "cache").glob("bpe-*.json"))
    cached.write_text("{not json")
    with pytest.raises(ts.parallax.CheckpointError, match="delete this cached file"):
        make(tmp_path, [f], tokenizer="bpe", vocab_size=300).tokenizer  # noqa: B018 - reading it loads the cache


def test_val_fraction_holds_out_the_last_stories_of_each_file(tmp_path):
    a, b = write_txt(tmp_path / "a.txt", 30), tmp_path / "b.txt"
    b.write_text("\n<|endoftext|>\n".join(f"Story {i} of the second file." for i in range(20)), encoding="utf-8")
    data = make(tmp_path, [a, b], val_fraction=0.1)
    train, val = data._read_stories()
    assert val == stories(30)[-3:] + [f"Story {i} of the second file." for i in (18, 19)]
    assert train == stories(30)[:-3] + [f"Story {i} of the second file." for i in range(18)]
    assert not set(train) & set(val[-2:])
    again = make(tmp_path, [a, b], val_fraction=0.1, max_stories=40)  # the first 40 stories: 30 + 10
    assert again._read_stories()[1] == stories(30)[-3:] + ["Story 9 of the second file."]
    last = [f"Story {i} of the second file." for i in range(15, 20)]
    assert make(tmp_path, [a, b])._read_stories()[1] == last  # without it: the last val_stories, capped at a tenth
    whole = make(tmp_path, [a, b], val_fraction=0.1, val_sequences=None)
    n = sum(len(v["targets"]) for v in whole.val_batches())
    assert n == (len(whole.ids()["val"]) - 1) // 8 > 3  # every window of the held-out stories
