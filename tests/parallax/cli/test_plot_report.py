"""`parallax plot` and `parallax report` on a trained tiny run, and their one line without matplotlib."""
from __future__ import annotations

import html.parser
import sys
from pathlib import Path

import pytest

from parallax.cli.main import main
from parallax.testing import train, write_tiny_recipe

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cli-plot")
    train(write_tiny_recipe(tmp / "tiny.yaml", tmp / "run"), tmp / "run", steps=6)
    return tmp / "run"


def test_plot_writes_at_least_five_pngs(tiny_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg

    assert main(["plot", str(tiny_run), "--out", str(tmp_path / "plots")]) == 0
    listed = capsys.readouterr().out.split()
    files = sorted((tmp_path / "plots").glob("*.png"))
    assert len(files) >= 5 and sorted(map(str, files)) == sorted(listed)
    for f in files:
        assert f.read_bytes()[:8] == PNG and mpimg.imread(f).ndim == 3


def test_report_writes_a_k_map_with_one_element_per_token(tiny_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    dest = tmp_path / "r.html"
    assert main(["report", str(tiny_run), "--out", str(dest), "--tokens", "25"]) == 0
    assert capsys.readouterr().out.strip() == str(dest)

    class Tokens(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.ks: list[str] = []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "span" and "tok" in (a.get("class") or "").split():
                self.ks.append(a["data-k"])

    parser = Tokens()
    parser.feed(dest.read_text(encoding="utf-8"))
    assert len(parser.ks) == 25 and all(1 <= int(k) <= 4 for k in parser.ks)


def test_default_destinations_are_in_the_run(tiny_run, capsys):
    pytest.importorskip("matplotlib")
    assert main(["report", str(tiny_run)]) == 0
    assert (tiny_run / "report.html").is_file()


@pytest.mark.parametrize("command", ["plot", "report"])
def test_without_matplotlib_one_line_and_exit_2(tiny_run, command, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    assert main([command, str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert err == f'parallax {command}: needs matplotlib; pip install "parallax-cws[plot]"\n'
