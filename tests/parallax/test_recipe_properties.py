"""Property: whatever the overrides or the recipe file, ``parallax validate`` exits 0, or exits 2 with one line.

Overrides are built from the real schema's key paths (every key of the validated tiny recipe,
defaults included) with values of random types, and mixed with malformed ``key=value`` strings,
``~key`` removals and YAML oddities (anchors, tags, interpolations, duplicate keys). Recipe files
are random YAML mappings, the tiny recipe with values replaced or lines mutated, and garbage text.
Each goes through the CLI's ``main`` in-process, as ``parallax validate`` runs it: a crash would be
a traceback, so the test fails on anything but exit 0, or exit 2 with a single ``error:`` line.

Integers stay within +-1000: sizes beyond what a machine can build (``model.d_model=10**12``) are
refused by the memory bounds, which have their own tests; this test is about reading the input.
"""
from __future__ import annotations

import contextlib
import io
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallax import hookspecs
from parallax.cli.main import main
from parallax.recipe import validate
from parallax.registry import get_registry
from parallax.testing import tiny_recipe_data

WORK = Path(tempfile.mkdtemp(prefix="parallax-properties-"))  # the recipe files; validate writes nothing
TINY = tiny_recipe_data(WORK / "run")
RECIPE = WORK / "tiny.yaml"
RECIPE.write_text(yaml.safe_dump(TINY, sort_keys=False))
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _paths(node, prefix=""):
    if prefix:
        yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _paths(value, f"{prefix}.{key}" if prefix else str(key))


# every key of the schema as the tiny recipe fills it in: seed, model.experts.0.slots, train.optimizer.lr...
PATHS = sorted(set(_paths(validate(tiny_recipe_data(WORK / "run")).model_dump(mode="json", serialize_as_any=True))))
# component names that validate builds quickly on the meta device (data sources download or read files)
NAMES = sorted({n for kind in hookspecs.KINDS if kind != "data_sources" for n in get_registry().names(kind)})
ODDITIES = [  # YAML and OmegaConf constructs a careless or hostile user might paste
    "&a [*a]", "*a", "{a: 1, a: 2}", "{<<: {type: x}, type: y}", "!!binary aGk=",
    "!!python/object/apply:os.system [ls]",
    "!!set {a, b}", "${oc.env:PARALLAX_SURELY_UNSET}", "${", "${oc.decode:'[1'}", "${seed}", "${model}", "${nope.x}",
    "2020-13-45", "0x_", "0b_", "1e999", "-.inf", ".nan", "? [a]\n: 1", "[" * 50, "- a\n- b", "---\n---", "\t", "'",
    "\x00", "\ufeff", "~", "null", "{type: cws}", "{type: transformer}", "[{type: siren}]", "9" * 5000,
]

scalars = (st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(NAMES))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["type", "slots", "heads", "x"]) | st.text(max_size=6),
                                        inner, max_size=3), max_leaves=6)


def _flow(value) -> str:
    """A value as one-line YAML, as a user types it after ``key=``."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()


keys = st.sampled_from(PATHS) | st.builds(lambda p, s: f"{p}{s}", st.sampled_from(PATHS),
                                          st.sampled_from([".x", ".0", ".-1", "..", ".type", "[0]", " ", ".1000"]))
value_texts = st.builds(_flow, values) | st.sampled_from(ODDITIES) | st.text(max_size=20)
overrides = st.lists(
    st.builds(lambda k, v: f"{k}={v}", keys, value_texts)
    | st.builds(lambda k: f"~{k}", keys)
    | st.text(max_size=20)  # malformed: no '=', an empty key, a stray '~'
    | st.sampled_from(["=", "~", "=1", "a=", ".=1", "seed==1", "model=", "~model.experts.7", "model.experts.x=1"]),
    min_size=1, max_size=4)


def validate_cli(argv: list[str]) -> None:
    """Run ``parallax validate ARGV`` in-process; assert exit 0, or exit 2 with one ``error:`` line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["validate", *argv])
        except SystemExit as e:  # argparse exits by itself (an override that looks like a --flag)
            rc = e.code
    lines = err.getvalue().splitlines()
    assert rc in (0, 2), f"exit {rc}: {err.getvalue()}"
    if rc == 0:
        assert "valid" in out.getvalue() and not lines, err.getvalue()
    else:
        assert len(lines) == 1 and re.match(r"parallax( validate)?: error: ", lines[0]), err.getvalue()


@pytest.mark.slow
@settings(max_examples=280, **SETTINGS)
@given(overrides)
def test_any_overrides_give_exit_0_or_one_line(items):
    validate_cli([str(RECIPE), *items])


def _replace(data, path: str, value):
    """``data`` with the value at ``path`` (a key path of the schema) replaced, where it still exists."""
    node = data
    *parents, last = path.split(".")
    for part in parents:
        node = _child(node, part)
        if not isinstance(node, (dict, list)):
            return data
    if isinstance(node, dict):
        node[last] = value
    elif last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    return data


def _child(node, part: str):
    if isinstance(node, list):
        return node[int(part)] if part.isdigit() and int(part) < len(node) else None
    return node.get(part)


def _mutate_lines(text: str, ops: list[tuple[int, int, str]]) -> str:
    lines = text.splitlines()
    for kind, at, extra in ops:
        i = at % len(lines)
        if kind == 0:
            del lines[i]
        elif kind == 1:
            lines.insert(i, lines[i])  # a duplicate key, or a duplicate list item
        else:
            lines[i] = lines[i][: len(extra)] + extra + lines[i][len(extra):]
        if not lines:
            return ""
    return "\n".join(lines) + "\n"


def _tiny_with(replacements) -> str:
    data = tiny_recipe_data(WORK / "run")
    for path, value in replacements:
        data = _replace(data, path, value)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


documents = (
    st.builds(_tiny_with, st.lists(st.tuples(st.sampled_from(PATHS), values), min_size=1, max_size=3))
    | st.builds(_mutate_lines, st.just(RECIPE.read_text()),
                st.lists(st.tuples(st.integers(0, 2), st.integers(0, 200),
                                   st.sampled_from(ODDITIES) | st.text(max_size=4)), min_size=1, max_size=3))
    | st.builds(lambda v: yaml.safe_dump(v, allow_unicode=True),
                st.dictionaries(st.sampled_from(["seed", "model", "data", "train", "out_dir", "modle"]), values,
                                max_size=5))
    | st.text(max_size=200)  # garbage
    | st.builds(lambda parts: "\n".join(parts), st.lists(st.sampled_from(ODDITIES), min_size=1, max_size=4))
)


@pytest.mark.slow
@settings(max_examples=240, **SETTINGS)
@given(documents)
def test_any_recipe_file_gives_exit_0_or_one_line(text):
    path = WORK / "doc.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    validate_cli([str(path)])
