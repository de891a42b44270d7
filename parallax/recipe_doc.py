"""``parallax cat --doc``: every key of a recipe with its type, value, default, allowed values and description.

The documentation is the schemas themselves: the top-level ``Recipe`` and ``train`` (parallax.schema)
and, for each component the recipe chooses, the ``Config`` of the plugin its ``type`` names. A
component key's allowed values are the names registered for its kind.
"""
from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .registry import Registry, get_registry
from .schema import Spec


@dataclass
class KeyDoc:
    key: str  # dotted path, list items by index (model.experts.0.slots)
    type: str
    value: Any
    default: Any  # PydanticUndefined for a required key
    allowed: str  # "one of a, b", ">= 1", the registered names, or ""
    description: str


def document(recipe: BaseModel, registry: Registry | None = None) -> list[KeyDoc]:
    """The keys of a validated recipe, in schema order, nested components included."""
    from .recipe import _component_kind

    registry = registry or get_registry()
    out: list[KeyDoc] = []

    def walk(obj: BaseModel, prefix: str) -> None:
        for name, finfo in type(obj).model_fields.items():
            if name == "type" and prefix and isinstance(obj, Spec):
                continue  # a component's type is its own row (model.halting = momentum)
            key = f"{prefix}{name}"
            value = getattr(obj, name)
            kind = _component_kind(finfo.annotation)
            kinds = [m.kind for m in finfo.metadata if hasattr(m, "kind")]
            kind = (kinds[0], False) if kinds else kind
            if kind is not None:
                names = ", ".join(registry.names(kind[0]))
                default = finfo.get_default(call_default_factory=True) if not finfo.is_required() else PydanticUndefined
                if isinstance(default, list):
                    default = [getattr(d, "type", d) for d in default]
                shown = [v.type for v in value] if kind[1] else getattr(value, "type", value)
                what = f"list of {kind[0]}" if kind[1] else kind[0][:-1].replace("_", " ")
                out.append(KeyDoc(key, what, shown, default, f"registered: {names}" if names else "",
                                  finfo.description or _first_line(registry, kind[0], value, kind[1])))
                items = value if kind[1] else [value]
                for i, item in enumerate(items):
                    if isinstance(item, BaseModel):
                        walk(item, f"{key}.{i}." if kind[1] else f"{key}.")
                continue
            if isinstance(value, BaseModel):
                out.append(KeyDoc(key, "mapping", "", PydanticUndefined, "", finfo.description or ""))
                walk(value, f"{key}.")
                continue
            default = finfo.get_default(call_default_factory=True) if not finfo.is_required() else PydanticUndefined
            out.append(KeyDoc(key, _type_name(finfo.annotation), value, default,
                              _allowed(finfo.annotation, finfo.metadata), finfo.description or ""))

    walk(recipe, "")
    return out


def _first_line(registry: Registry, kind: str, value: Any, is_list: bool) -> str:
    """A component row without a field description: the first line of its plugin class's docstring."""
    if is_list or not isinstance(value, Spec):
        return ""
    doc = (registry.get(kind, value.type).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def format_docs(docs: list[KeyDoc]) -> str:
    """Two lines per key: ``key (type) = value  [default ..; allowed ..]`` and the indented description."""
    lines = []
    for d in docs:
        extra = []
        if d.default is not PydanticUndefined and d.type != "mapping":
            extra.append(f"default {_show(d.default)}")
        elif d.type != "mapping":
            extra.append("required")
        if d.allowed:
            extra.append(d.allowed)
        value = "" if d.type == "mapping" else f" = {_show(d.value)}"
        lines.append(f"{d.key} ({d.type}){value}" + (f"  [{'; '.join(extra)}]" if extra else ""))
        lines.append(f"    {d.description or '(no description)'}")
    return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else "''"
    return str(value)


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is Literal:
        return "str"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(ann))
    if origin is list:
        args = typing.get_args(ann)
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is typing.Annotated:
        return _type_name(typing.get_args(ann)[0])
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def _allowed(ann: Any, metadata: list) -> str:
    parts = []
    for arg in (ann, *typing.get_args(ann)):
        if typing.get_origin(arg) is Literal:
            parts.append("one of " + ", ".join(_show(v) for v in typing.get_args(arg)))
    bounds = {at.Ge: ">=", at.Gt: ">", at.Le: "<=", at.Lt: "<", at.MinLen: "length >=", at.MaxLen: "length <="}
    for m in metadata:
        for cls, sign in bounds.items():
            if isinstance(m, cls):
                bound = next(iter(vars(m).values()), None) if not hasattr(m, "__dataclass_fields__") else \
                    getattr(m, next(iter(m.__dataclass_fields__)))
                parts.append(f"{sign} {bound}")
    return "; ".join(parts)
