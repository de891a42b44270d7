"""YAML as recipes read it: PyYAML's safe types, checked for what the safe loader lets through.

PyYAML's safe loader keeps the last of two equal keys without a word, and expands aliases without
limit: nine anchors of nine aliases each (a few hundred bytes) stand for 9^9 values, and anything
that walks the loaded data (a cycle check, OmegaConf, pydantic) takes hours over them. ``load``
composes the node graph first, checks it in one pass that visits each node once (however many
aliases point at it), and only then builds Python values:

- a key given twice in one mapping is an error naming both places;
- an alias inside the anchor it names (a loop) is an error;
- more than ``MAX_ALIAS_NODES`` nodes reached through aliases is an error: each node's expanded size
  is computed once and memoised, so the count is linear in the document's length;
- nesting deeper than ``MAX_DEPTH`` levels, in the text or through aliases, is an error (PyYAML,
  OmegaConf and pydantic recurse, and would overflow Python's stack);
- a scalar that matches a YAML type but does not convert (``2020-13-45``, ``0x_``, an integer of
  5000 digits) is a ``yaml.YAMLError`` at its line and column, as a syntax error is.

Errors of the first four kinds are ``ConfigError`` whose message starts with the key path; a
syntax error is a ``yaml.YAMLError`` with ``problem_mark``, for the caller to place.
"""
from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError

MAX_ALIAS_NODES = 100_000  # a recipe reuses a few small anchors; this is far beyond any of them
MAX_DEPTH = 32  # a recipe nests about five levels; OmegaConf overflows the stack near 75
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """The safe loader, bounded in depth, remembering anchor names, converting bad scalars to YAMLErrors."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0
        self.anchor_of: dict[int, str] = {}  # id(node) -> anchor name, for messages

    def compose_node(self, parent, index):
        if self.depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_document(self):
        # the base class forgets its anchors at the end of the document; keep their names
        self.get_event()  # the document start
        node = self.compose_node(None, None)
        self.get_event()
        self.anchor_of = {id(n): name for name, n in self.anchors.items()}
        self.anchors = {}
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:  # int('', 16) for 0x_, date(2020, 13, 45), 5000 digits
            raise ConstructorError(None, None, f"cannot read {node.value!r} ({e})", node.start_mark) from None


def load(text: str, source: str, prefix: str = "") -> Any:
    """Parse one YAML document from ``text``. ``source`` names it in messages (a file, an override);
    ``prefix`` is the key path of the value it will become (``model`` for ``model={...}``)."""
    loader = _Loader(text)
    try:
        loader.get_event()  # the stream start
        node = None if loader.check_event(yaml.StreamEndEvent) else loader.compose_document()
        if not loader.check_event(yaml.StreamEndEvent):
            event = loader.get_event()
            raise yaml.composer.ComposerError("expected a single document in the stream", None,
                                              "but found another document", event.start_mark)
        if node is None:
            return None
        _Checker(loader, source).size(node, prefix)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _Checker:
    """One depth-first pass over the node graph: duplicate keys, loops, and the aliases' expansion."""

    def __init__(self, loader: _Loader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.sizes: dict[int, tuple[int, int] | None] = {}  # id(node) -> (nodes, levels); None while visited
        self.through_aliases = 0

    def size(self, node: Node, path: str) -> tuple[int, int]:
        """(nodes, levels) of the expansion of ``node``, itself included."""
        key = id(node)
        if key in self.sizes:  # reached again: through an alias
            known = self.sizes[key]
            if known is None:
                raise ConfigError(f"{path or 'recipe'}: the YAML alias *{self._anchor(node)} is inside the anchor "
                                  f"it names ({self._line(node)}); remove the loop")
            self.through_aliases += known[0]
            if self.through_aliases > MAX_ALIAS_NODES:
                raise ConfigError(f"{path or 'recipe'}: YAML aliases expand to more than {MAX_ALIAS_NODES} nodes "
                                  f"(alias *{self._anchor(node)}, anchor at {self._line(node)}); "
                                  f"write the values out instead of nesting aliases")
            return known
        self.sizes[key] = None
        children: list[tuple[Node, str]] = []
        if isinstance(node, SequenceNode):
            children = [(child, _join(path, i)) for i, child in enumerate(node.value)]
        elif isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for k, v in node.value:
                children += [(k, path), (v, _join(path, self._key(k, seen, path)))]
        total, depth = 1, 0
        for child, where in children:
            n, d = self.size(child, where)
            total, depth = total + n, max(depth, d)
        if depth + 1 > MAX_DEPTH:  # aliases nest deeper than the text: anchors each holding the previous one
            raise ConfigError(f"{path or 'recipe'}: YAML aliases nest values more than {MAX_DEPTH} levels deep "
                              f"({self._line(node)}); write the values out instead of nesting aliases")
        self.sizes[key] = (total, depth + 1)
        return total, depth + 1

    def _key(self, k: Node, seen: dict, path: str) -> Any:
        """The key's value for messages; a key equal to an earlier one of the same mapping is an error."""
        if not isinstance(k, ScalarNode) or k.tag == _MERGE:
            return k.value if isinstance(k, ScalarNode) else "?"
        value = self.loader.construct_object(k)
        try:
            first = seen.get(value)
        except TypeError:  # unhashable: the constructor says so, at its line
            return k.value
        if first is not None:
            a, b = first.start_mark, k.start_mark
            where = (f"lines {a.line + 1} and {b.line + 1}" if a.line != b.line
                     else f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}")
            raise ConfigError(f"{_join(path, k.value)}: duplicate key ({where} of {self.source}); keep one")
        seen[value] = k
        return k.value

    def _anchor(self, node: Node) -> str:
        return self.loader.anchor_of.get(id(node), "?")

    def _line(self, node: Node) -> str:
        return f"line {node.start_mark.line + 1} of {self.source}"


def _join(path: str, part: Any) -> str:
    return f"{path}.{part}" if path else str(part)
