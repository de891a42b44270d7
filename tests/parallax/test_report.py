"""The HTML report: self-contained, one K-map element per token with its K (and surprisal where
scored), text escaped, a prompt's generation mapped, and a model without a K loop noted."""
from __future__ import annotations

import html.parser
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

from parallax.report import build_report  # noqa: E402
from parallax.runs import open_run  # noqa: E402
from parallax.testing import train, write_tiny_recipe  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "data"))
from text_helpers import text_recipe, write_txt  # noqa: E402


class Page(html.parser.HTMLParser):
    """The K map's token elements (attributes and text), every src/href, and whether there are scripts."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tokens: list[dict] = []
        self.links: list[str] = []
        self.scripts = 0
        self._in_token = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href")]
        self.scripts += tag == "script" or tag == "link"
        if tag == "span" and "tok" in (a.get("class") or "").split():
            self.tokens.append({**a, "text": ""})
            self._in_token = True

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_token = False

    def handle_data(self, data):
        if self._in_token:
            self.tokens[-1]["text"] += data


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    train(write_tiny_recipe(tmp / "tiny.yaml", tmp / "run"), tmp / "run", steps=6)
    return tmp / "run"


def test_the_k_map_holds_one_element_per_validation_token_with_its_k(tiny_run):
    page = Page(build_report(tiny_run))
    run = open_run(tiny_run)
    batches = list(run.data.val_batches())
    inputs = torch.cat([b["inputs"] for b in batches])  # (16,10)
    targets = torch.cat([b["targets"] for b in batches])
    with torch.no_grad():
        k = torch.cat([run.model(b["inputs"]).k for b in batches])  # (16,10)
    assert len(page.tokens) == inputs.numel() == 160
    assert [int(t["data-k"]) for t in page.tokens] == k.flatten().tolist()
    assert [t["text"] for t in page.tokens] == [str(i) for i in inputs.flatten().tolist()]  # no tokenizer: ids
    scored = [t for t in page.tokens if "data-surprisal" in t]
    assert len(scored) == int((targets != -100).sum())  # the recall answers only
    assert all(float(t["data-surprisal"]) >= 0 and "surprisal" in t["title"] for t in scored)
    assert all(t["title"].startswith(f"K {t['data-k']}") for t in page.tokens)


def test_the_page_is_self_contained(tiny_run):
    page_text = build_report(tiny_run)
    page = Page(page_text)
    assert page.scripts == 0
    images = [s for s in page.links if s.startswith("data:image/png;base64,")]
    assert len(images) >= 5 and images == page.links  # nothing else is fetched
    assert "http://" not in page_text and "https://" not in page_text
    assert "val_loss" in page_text and "d_model: 16" in page_text  # the summary and the recipe


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report-text")
    recipe = text_recipe(tmp, [write_txt(tmp / "s.txt", 40)])
    train(recipe, tmp / "run", steps=3)
    return tmp / "run"


def test_a_prompt_and_its_generation_are_mapped_and_escaped(text_run):
    prompt = 'Tom <b>&amp; "Zoë"'
    page = Page(build_report(text_run, prompt=prompt, max_new_tokens=8, temperature=0))
    tok = open_run(text_run).data.tokenizer
    n_prompt = len(tok.encode(prompt))
    generated = [t for t in page.tokens if "gen" in t["class"].split()]
    assert len(page.tokens) - len(generated) == n_prompt and 1 <= len(generated) <= 8
    assert all(t["data-k"].isdigit() for t in page.tokens)
    text = "".join(t["text"] for t in page.tokens[:n_prompt])
    assert text.replace("\ufffd", "") == prompt.replace("ë", "")  # byte ids of ë decode one at a time
    assert all("data-surprisal" in t for t in page.tokens[:-1]) and "data-surprisal" not in page.tokens[-1]


def test_validation_text_is_decoded_with_the_runs_tokenizer(text_run):
    page = Page(build_report(text_run, max_tokens=20))
    run = open_run(text_run)
    ids = next(iter(run.data.val_batches()))["inputs"].flatten()[:20].tolist()  # 16 tokens a sequence: 16 + 4
    assert len(page.tokens) == 20
    assert [t["text"] for t in page.tokens] == [run.data.tokenizer.decode([i]).replace("\n", "\u21b5\n") for i in ids]


def test_runs_without_a_token_k_map_get_a_note(tmp_path):
    image = write_tiny_recipe(tmp_path / "img.yaml", tmp_path / "img")
    train(image, tmp_path / "img", "~data", "data={type: digits}", "model.encoder={type: image, patch: 4}",
          "~model.decoder", "model.decoder={type: classifier, pool: mean}", steps=2)
    page = build_report(tmp_path / "img")
    assert Page(page).tokens == [] and "(images), not tokens" in page
    base = write_tiny_recipe(tmp_path / "t.yaml", tmp_path / "t")
    train(base, tmp_path / "t", "~model", "model={type: transformer, n_embd: 16, n_layer: 1, n_head: 2}", steps=2)
    page = build_report(tmp_path / "t")
    assert Page(page).tokens == [] and "model has no K loop: no K map" in page
