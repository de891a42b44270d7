"""parallax.safe_yaml: duplicate keys, alias loops, alias bombs and deep nesting are one ConfigError; a scalar that
does not convert is a YAMLError at its place."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml

from parallax import safe_yaml
from parallax.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from yaml_bombs import bomb, within  # noqa: E402


def test_plain_yaml_loads_as_the_safe_loader_loads_it():
    text = "a: 1\nb: [x, 2.5, null, true]\nc: {d: {e: f}}\nbase: &b {lr: 1}\nuse: *b\nmerged: {<<: *b, lr: 2}\n"
    assert safe_yaml.load(text, "t.yaml") == yaml.safe_load(text)
    assert safe_yaml.load("", "t.yaml") is None


def test_a_duplicate_key_names_both_lines_and_its_path():
    text = "model:\n  type: cws\n  d_model: 16\n  k_max: 4\n  d_model: 32\n"
    with pytest.raises(ConfigError, match=r"^model\.d_model: duplicate key \(lines 3 and 5 of t\.yaml\); keep one$"):
        safe_yaml.load(text, "t.yaml")


def test_a_duplicate_key_on_one_line_names_the_columns_under_the_prefix():
    with pytest.raises(ConfigError, match=r"^model\.decoder\.heads: duplicate key \(line 1, columns 2 and 12 of o\)"):
        safe_yaml.load("{heads: 2, heads: 4}", "o", prefix="model.decoder")


def test_keys_equal_as_values_are_duplicates_and_merged_keys_are_not():
    with pytest.raises(ConfigError, match=r"^a\.0x1: duplicate key \(line 1, columns 5 and 11 of t\)"):
        safe_yaml.load("a: {1: x, 0x1: y}", "t")
    merged = safe_yaml.load("b: &b {x: 1}\nc: {<<: *b, x: 2}\n", "t")
    assert merged["c"] == {"x": 2}  # a merged key is overridden, not repeated


def test_a_duplicate_inside_a_list_item_has_the_index_in_its_path():
    with pytest.raises(ConfigError, match=r"^experts\.1\.slots: duplicate key \(lines 3 and 4"):
        safe_yaml.load("experts:\n  - {type: a}\n  - slots: 1\n    slots: 2\n    type: b\n", "t")


def test_an_alias_bomb_is_refused_at_once_naming_the_limit():
    text = bomb()
    assert len(text) < 500
    start = time.perf_counter()
    with within(5), pytest.raises(ConfigError, match=f"expand to more than {safe_yaml.MAX_ALIAS_NODES} nodes"):
        safe_yaml.load(text, "bomb.yaml")
    assert time.perf_counter() - start < 1.0


def test_aliases_under_the_limit_load():
    data = safe_yaml.load(bomb(levels=3, width=9), "t")  # 9**3 values
    assert len(data["a3"]) == 9 and data["a3"][0][0] == [["x"]] * 9 and data["a3"][8] is data["a3"][0]


def test_an_alias_inside_its_own_anchor_is_a_loop():
    loop = r"^a\.0\.b: the YAML alias \*x is inside the anchor it names \(line 1 of t\); remove the loop$"
    with within(5), pytest.raises(ConfigError, match=loop):
        safe_yaml.load("a: &x [{b: *x}]\n", "t")


def test_nesting_too_deep_in_the_text_is_a_yaml_error_at_its_line():
    with pytest.raises(yaml.YAMLError, match=f"nested more than {safe_yaml.MAX_DEPTH} levels"):
        safe_yaml.load("[" * 3000 + "]" * 3000, "t")  # PyYAML alone: RecursionError
    depth = safe_yaml.MAX_DEPTH - 1
    assert safe_yaml.load("[" * depth + "]" * depth, "t") is not None


def test_nesting_too_deep_through_aliases_is_refused():
    lines = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 200)]  # each text line 2 deep
    with pytest.raises(ConfigError, match=f"nest values more than {safe_yaml.MAX_DEPTH} levels deep"):
        safe_yaml.load("\n".join(lines), "t")


@pytest.mark.parametrize("scalar,words", [
    ("2020-13-45", "month must be in 1..12"),  # matches the timestamp pattern, is no date
    ("0x_", "base 16"),  # matches the int pattern, has no digits
    ("0b_", "base 2"),
    ("1" * 5000, "4300 digits"),  # Python refuses to convert so many digits
])
def test_a_scalar_that_does_not_convert_is_a_yaml_error_at_its_place(scalar, words):
    with pytest.raises(yaml.YAMLError, match=words) as info:
        safe_yaml.load(f"a: 1\nb: {scalar}\n", "t")
    assert info.value.problem_mark.line == 1  # the caller names line 2


def test_two_documents_are_a_yaml_error():
    with pytest.raises(yaml.YAMLError, match="single document"):
        safe_yaml.load("a: 1\n---\nb: 2\n", "t")
