"""A state file: nested Python state as safetensors tensors plus JSON, so that loading runs no code.

``encode(obj) -> (tensors, doc)`` splits ``obj`` (dicts, lists, tuples, None, bool, int, float, str,
``torch.Tensor`` and ``numpy.ndarray``, nested) into a flat ``{name: Tensor}`` for safetensors and a
JSON document in which every tensor and array is a reference to its name; ``decode(doc, tensors)``
rebuilds ``obj`` exactly. What JSON cannot say by itself is tagged, each tag an object of one key
beginning with ``$``:

- ``{"$tensor": NAME}``, ``{"$ndarray": NAME}``: a tensor or a numpy array (kept as its dtype);
- ``{"$tuple": [...]}``: a tuple (``random.setstate`` and ``np.random.set_state`` want tuples);
- ``{"$float": "nan" | "inf" | "-inf"}``: a float JSON has no literal for;
- ``{"$dict": [[key, value], ...]}``: a dict whose keys are not all strings (an optimizer's state
  is keyed by parameter index), or that has a key beginning with ``$``.

Tensor names are the key path (``optimizer.state.0.exp_avg``), so the safetensors file reads on its
own. ``dump`` and ``load`` write and read the pair of files; anything they cannot read raises
``ValueError`` (``OSError`` for a missing file), which callers turn into their own one-line errors.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT = "parallax-state/1"
TAGS = ("$tensor", "$ndarray", "$tuple", "$float", "$dict")


def encode(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """``obj`` -> (tensors by name, a JSON-serializable document referring to them)."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()

    def name_for(path: list[str]) -> str:
        base = ".".join(path) or "value"
        name, n = base, 1
        while name in tensors:
            n += 1
            name = f"{base}#{n}"
        return name

    def put(path: list[str], t: torch.Tensor) -> str:
        t = t.detach().contiguous().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in storages:  # safetensors refuses tensors that share memory
            t = t.clone()
        elif ptr is not None:
            storages.add(ptr)
        name = name_for(path)
        tensors[name] = t
        return name

    def enc(x: Any, path: list[str]) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            return x if math.isfinite(x) else {"$float": repr(x)}  # 'nan', 'inf', '-inf'
        if isinstance(x, torch.Tensor):
            return {"$tensor": put(path, x)}
        if isinstance(x, np.ndarray):
            return {"$ndarray": put(path, torch.from_numpy(np.ascontiguousarray(x)))}
        if isinstance(x, tuple):
            return {"$tuple": [enc(v, [*path, str(i)]) for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, [*path, str(i)]) for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in x):
                return {k: enc(v, [*path, k]) for k, v in x.items()}
            return {"$dict": [[enc_key(k, path), enc(v, [*path, str(k)])] for k, v in x.items()]}
        where = ".".join(path) or "the value"
        raise TypeError(f"{where}: a {type(x).__name__} cannot be stored in a state file "
                        f"(only dict, list, tuple, None, bool, int, float, str, Tensor, ndarray)")

    def enc_key(k: Any, path: list[str]) -> Any:
        if k is None or isinstance(k, (bool, int, float, str)):
            return enc(k, path)
        if isinstance(k, tuple):
            return {"$tuple": [enc_key(v, path) for v in k]}
        raise TypeError(f"{'.'.join(path) or 'the value'}: a dict key of type {type(k).__name__} cannot be stored")

    return tensors, enc(obj, [])


def decode(doc: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``encode``; raises ``ValueError`` for a document ``encode`` does not write."""

    def tensor(name: Any) -> torch.Tensor:
        if not isinstance(name, str) or name not in tensors:
            raise ValueError(f"refers to a tensor {name!r} the tensor file does not hold")
        return tensors[name]

    def dec(x: Any) -> Any:
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            raise ValueError(f"holds a {type(x).__name__}, which a state file never holds")
        tag = next((k for k in x if k.startswith("$")), None)
        if tag is None:
            return {k: dec(v) for k, v in x.items()}
        if len(x) != 1 or tag not in TAGS:
            raise ValueError(f"holds an unknown tag {tag!r}")
        v = x[tag]
        if tag == "$tensor":
            return tensor(v)
        if tag == "$ndarray":
            return tensor(v).numpy().copy()
        if tag == "$float":
            if v not in ("nan", "inf", "-inf"):
                raise ValueError(f"holds a $float of {v!r}; expected 'nan', 'inf' or '-inf'")
            return float(v)
        if not isinstance(v, list):
            raise ValueError(f"holds a {tag} that is not a list")
        if tag == "$tuple":
            return tuple(dec(i) for i in v)
        if not all(isinstance(kv, list) and len(kv) == 2 for kv in v):
            raise ValueError("holds a $dict whose items are not [key, value] pairs")
        out = {}
        for k, val in v:
            key = dec(k)
            try:
                out[key] = dec(val)
            except TypeError:  # an unhashable key (a list or a dict)
                raise ValueError(f"holds a $dict key of type {type(key).__name__}") from None
        return out

    return dec(doc)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, with its I/O failures (a full disk) raised as the ``OSError`` they are."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        found = re.search(r"os error (\d+)", str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code) if code else "I/O error", str(path)) from None


def dump(obj: Any, tensors_path: str | Path, json_path: str | Path) -> None:
    """Write ``obj`` as ``tensors_path`` (safetensors) and ``json_path`` (the document)."""
    tensors, doc = encode(obj)
    save_tensors(tensors, tensors_path, metadata={"format": FORMAT})
    text = json.dumps({"format": FORMAT, "tensors": Path(tensors_path).name, "state": doc}, allow_nan=False)
    Path(json_path).write_text(text + "\n", encoding="utf-8")


def read_document(json_path: str | Path) -> Any:
    """The JSON document of a state file, checked for its format; ``ValueError`` if it is not one."""
    raw = Path(json_path).read_bytes()
    try:
        top = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(top, dict) or top.get("format") != FORMAT or "state" not in top:
        found = top.get("format") if isinstance(top, dict) else None
        raise ValueError(f"not a {FORMAT} state file" + (f" (its format is {found!r})" if found else ""))
    return top["state"]


def check_tensors(tensors_path: str | Path) -> None:
    """Read the safetensors header only: a truncated or foreign file raises ``ValueError``."""
    try:
        with safe_open(str(tensors_path), framework="pt"):
            pass
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ValueError(f"not a readable safetensors file ({_first_line(e)})") from None


def load(tensors_path: str | Path, json_path: str | Path) -> Any:
    """Read what ``dump`` wrote; ``ValueError`` names what is wrong with a damaged pair."""
    doc = read_document(json_path)
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ValueError(f"{Path(tensors_path).name}: not a readable safetensors file ({_first_line(e)})") from None
    return decode(doc, tensors)


def _no_constant(name: str) -> Any:
    raise ValueError(f"holds the bare constant {name}, which strict JSON does not allow")


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__
