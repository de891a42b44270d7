"""``generate --show-k``: each generated token with the K it used, in colour or in plain text.

Colour uses five bins of K in the standard ANSI colours (blue, cyan, green, yellow, red), which
every colour system a terminal may have renders as themselves, so the legend printed in the same
colours is right whatever rich downgrades to. Without colour (a pipe, a file, ``NO_COLOR``) each
token is followed by its K in brackets: ``Once upon a time[3]``.
"""
from __future__ import annotations

from rich.console import Console
from rich.text import Text

PALETTE = ("blue", "cyan", "green", "yellow", "red")  # few K steps -> many


def bins(k_max: int) -> list[tuple[int, int]]:
    """The K range (lo, hi) of each colour, splitting 1..k_max into at most len(PALETTE) bins."""
    n = min(len(PALETTE), k_max)
    edges = [1 + round(i * k_max / n) for i in range(n + 1)]  # bin i holds edges[i] <= K < edges[i+1]
    return [(edges[i], edges[i + 1] - 1) for i in range(n)]


def colours(k_max: int) -> list[str]:
    """The colour of each bin: blue for the fewest steps, red for k_max, evenly between."""
    n = len(bins(k_max))
    return [PALETTE[round(i * (len(PALETTE) - 1) / max(n - 1, 1))] for i in range(n)]


def colour_of(k: int, k_max: int) -> str:
    for (lo, hi), colour in zip(bins(k_max), colours(k_max)):
        if lo <= k <= hi:
            return colour
    return PALETTE[-1]


def uses_colour(console: Console) -> bool:
    return console.is_terminal and not console.no_color and console.color_system is not None


def render(prompt: str, pieces: list[str], ks: list[int], k_max: int, colour: bool) -> tuple[Text, Text]:
    """(the prompt and its continuation, the legend line)."""
    text = Text(prompt)
    if colour:
        for piece, k in zip(pieces, ks):
            text.append(piece, style=colour_of(k, k_max))
        legend = Text()
        legend.append("K: ", style="dim")
        for (lo, hi), name in zip(bins(k_max), colours(k_max)):
            legend.append(f"{lo}" if lo == hi else f"{lo}-{hi}", style=name)
            legend.append(" ")
        legend.append(f"(of k_max {k_max})", style="dim")
        return text, legend
    for piece, k in zip(pieces, ks):
        text.append(f"{piece}[{k}]")
    return text, Text(f"[K] after each generated token: the K steps it used, 1 to k_max {k_max}")
