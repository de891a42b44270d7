"""Write TinyStories-style text: short templated children's stories, for offline text runs.

    python examples/make_stories.py --n 4000 --seed 0 --out stories.txt
    parallax run recipes/tinystories.yaml data.files=stories.txt

Each story fills one template (a little animal with a name finds a thing somewhere, feels
something, shows a friend, and one of three endings) from small word lists, so the text has a
real but small structure: a BPE tokenizer trained on it stops at a few hundred tokens. Stories
are separated by ``<|endoftext|>`` lines, the format ``data.files`` reads. The output depends only
on ``--n`` and ``--seed`` (Python's ``random`` with a fixed seed), so every figure in
docs/results.md that used ``--n 4000 --seed 0`` (1,246,636 bytes, sha256 4f3ea0ca...) can be reproduced.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

NAMES = ["Lily", "Tom", "Ben", "Mia", "Sam", "Anna", "Max", "Sue", "Tim", "Zoe"]
ANIMALS = ["dog", "cat", "bird", "bunny", "frog", "duck", "bear", "fish"]
THINGS = ["ball", "kite", "box", "hat", "cake", "toy car", "red cup", "big tree"]
PLACES = ["park", "garden", "house", "forest", "beach", "school", "farm"]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud"]


def story(rng: random.Random) -> str:
    """One story; the draws happen in a fixed order, so a seed fixes the whole text."""
    name, animal, thing, place, feeling = (rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(THINGS),
                                           rng.choice(PLACES), rng.choice(FEELINGS))
    friend = rng.choice([x for x in NAMES if x != name])
    opening = (f"Once upon a time, there was a little {animal} named {name}. {name} liked to play in the {place}. "
               f"One day, {name} found a {thing}. {name} was very {feeling}. "
               f"{name} said, \"Look, {friend}! I found a {thing}!\" "
               f"{friend} smiled and said, \"Let's play with the {thing} together.\" ")
    ending = rng.choice([
        "They played all day and had lots of fun. The end.",
        f"But the {thing} broke. {name} cried, but {friend} gave {name} a hug. They were friends forever.",
        f"Then it started to rain, so they went home. {name} was {rng.choice(FEELINGS)}.",
    ])
    return opening + ending


def make_stories(n: int, seed: int = 0) -> str:
    """``n`` stories joined by ``<|endoftext|>`` lines, with a final newline."""
    rng = random.Random(seed)
    return "\n<|endoftext|>\n".join(story(rng) for _ in range(n)) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000, help="number of stories (default 4000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="-", help="output file (default: standard output)")
    args = p.parse_args(argv)
    if args.n < 2:
        p.error("--n: at least 2 stories (one to train on, one to validate)")
    text = make_stories(args.n, args.seed)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
