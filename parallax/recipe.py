"""Recipes: YAML (omegaconf) + CLI overrides -> a typed, validated ``Recipe``.

``load_recipe(path, overrides)`` reads the file, applies ``a.b=v`` and ``~a.b`` overrides, and
validates the result: first the fixed top-level schema, then each component against the
``Config`` of the plugin its ``type`` names. Every failure is a ``ConfigError`` whose one-line
message starts with the key path and lists the allowed keys or values.

The YAML is read by ``parallax.safe_yaml``: safe types only, a key given twice is an error, and
nesting and alias expansion are bounded. Values may be OmegaConf interpolations, resolved once the
overrides are applied: ``${oc.env:VAR}`` (an environment variable, as a string; an error naming
VAR when it is unset), ``${oc.env:VAR,default}``, ``${oc.decode:${oc.env:VAR}}`` (the variable read
as YAML: a number, a list) and ``${model.d_model}`` (another key, by its full path).
"""
from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import GrammarParseError, OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from . import safe_yaml
from .errors import ConfigError
from .registry import Registry, get_registry
from .schema import Kind, OptimizerConfig, Recipe, Spec

# Installed wheels carry recipes/ as parallax/recipes; a source checkout (or an editable install)
# has it beside the package.
_RECIPE_DIRS = (Path(__file__).parent / "recipes", Path(__file__).parent.parent / "recipes")


# -- locating and reading ---------------------------------------------------------------------
def builtin_recipes() -> dict[str, Path]:
    """Recipes shipped with the package, by name (file stem)."""
    for folder in _RECIPE_DIRS:
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    return {}


def find_recipe(ref: str) -> Path:
    """A path to a YAML file, or the name of a built-in recipe (``recall``)."""
    path = Path(ref)
    if path.is_file():
        return path
    shipped = builtin_recipes()
    if ref in shipped:
        return shipped[ref]
    if path.exists():
        raise ConfigError(f"{ref}: is not a file; give a recipe YAML file")
    hint = difflib.get_close_matches(path.stem, list(shipped), n=1)
    extra = f"; did you mean the built-in recipe '{hint[0]}'?" if hint else ""
    raise ConfigError(f"{ref}: recipe file not found{extra} (`parallax ls` lists built-in recipes)")


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not UTF-8 text; a recipe is a YAML file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        data = safe_yaml.load(text, str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the recipe is empty; it needs at least `model:` and `data:`")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys (got a {type(data).__name__})")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=v`` (v parsed as YAML) and ``~a.b`` (remove) in order; list indices are keys."""
    try:
        cfg = OmegaConf.create(data)
    except OmegaConfBaseException as e:
        raise ConfigError(f"recipe: {_omega_msg(e)}") from None
    for item in overrides:
        shown = _short(item)
        if item.startswith("~"):
            key = item[1:]
            parent, leaf = _parent(cfg, key, item)
            if isinstance(parent, typing.MutableSequence) or OmegaConf.is_list(parent):
                if not leaf.isdigit() or int(leaf) >= len(parent):
                    raise ConfigError(f"{key}: no such list index to remove (override '{shown}')")
                del parent[int(leaf)]
            elif leaf not in parent:
                raise ConfigError(f"{key}: no such key to remove (override '{shown}')")
            else:
                del parent[leaf]
            continue
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith("-"):
            raise ConfigError(f"override '{shown}': expected key=value (or ~key to remove a key)")
        if key.count(".") >= safe_yaml.MAX_DEPTH:
            raise ConfigError(f"override '{shown}': the key is more than {safe_yaml.MAX_DEPTH} levels deep")
        try:
            parsed = safe_yaml.load(value, f"override '{shown}'", prefix=key) if value != "" else ""
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{key}: cannot parse override value '{_short(value)}' as YAML ({problem})") from None
        # a mapping that names another plugin type replaces the component: the old type's options
        # (a motor decoder's layers) mean nothing to the new one (a classifier)
        try:
            current = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        except OmegaConfBaseException:  # e.g. a list indexed by a word: update() below names the problem
            current = None
        swap = (isinstance(parsed, dict) and "type" in parsed and OmegaConf.is_dict(current)
                and current.get("type") != parsed["type"])
        try:
            OmegaConf.update(cfg, key, parsed, merge=not swap, force_add=True)
        except (OmegaConfBaseException, ValueError, IndexError, TypeError) as e:
            raise ConfigError(f"{key}: cannot apply override '{shown}' ({_omega_msg(e)})") from None
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(_interpolation_msg(e)) from None


def _parent(cfg, key: str, item: str):
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        try:
            node = node[int(part)] if OmegaConf.is_list(node) else node[part]
        except (KeyError, IndexError, ValueError, TypeError, OmegaConfBaseException):  # TypeError: 3["x"]
            raise ConfigError(f"{'.'.join(parts[:i + 1])}: no such key (override '{_short(item)}')") from None
    if not (OmegaConf.is_dict(node) or OmegaConf.is_list(node)):
        raise ConfigError(f"{'.'.join(parts[:-1])}: is a value, not a mapping or list: it has no key "
                          f"'{parts[-1]}' to remove (override '{_short(item)}')")
    return node, parts[-1]


def _omega_msg(e: Exception) -> str:
    return str(e).strip().splitlines()[0]


def _interpolation_msg(e: OmegaConfBaseException) -> str:
    """One line for a ``${...}`` that does not resolve, at the key that holds it (OmegaConf's
    ``model.experts[0].slots`` written as ``model.experts.0.slots``)."""
    where = re.sub(r"\[(\d+)\]", r".\1", str(getattr(e, "full_key", None) or "")) or "recipe"
    msg = _omega_msg(e)
    var = re.search(r"Environment variable '([^']*)' not found", msg)
    if var:
        name = var.group(1)
        return (f"{where}: environment variable {name} is not set; set {name} in the environment, "
                f"or give a default: ${{oc.env:{name},default}}")
    if isinstance(e, GrammarParseError):
        return f"{where}: cannot parse the interpolation ({msg}); write \\${{ for a literal ${{"
    return f"{where}: {msg}"


def _short(text: str, n: int = 80) -> str:
    """``text``, cut to ``n`` characters for a one-line message."""
    return text if len(text) <= n else text[:n - 3] + "..."


# -- validation -------------------------------------------------------------------------------
def validate(data: dict, registry: Registry | None = None) -> Recipe:
    """Validate a plain dict into a ``Recipe`` whose components are their plugins' ``Config``s."""
    registry = registry or get_registry()
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, Recipe, [])) from None
    _resolve_components(recipe, [], registry, recipe._components)
    _check_optimizer(recipe.train.optimizer, ["train", "optimizer"], _trial_device(recipe.train.device))
    return recipe


def load_recipe(ref: str, overrides: list[str] | None = None, registry: Registry | None = None) -> Recipe:
    path = find_recipe(ref)
    return validate(apply_overrides(read_yaml(path), overrides or []), registry)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe (defaults included) as YAML."""
    data = recipe.model_dump(mode="json", serialize_as_any=True)
    return yaml.safe_dump(data, sort_keys=False)


def _component_kind(annotation: Any) -> tuple[str, bool] | None:
    """(kind, is_list) when a field annotation holds components, else None."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, Kind):
            return meta.kind, False
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _component_kind(arg)
            if found:
                return found[0], found[1] or origin is list
    return None


def _resolve_components(obj: BaseModel, path: list, registry: Registry, seen: list) -> None:
    for name, finfo in type(obj).model_fields.items():
        value = getattr(obj, name)
        kinds = [m.kind for m in finfo.metadata if isinstance(m, Kind)]
        found = (kinds[0], False) if kinds else _component_kind(finfo.annotation)
        if found is None:
            if isinstance(value, BaseModel):
                _resolve_components(value, path + [name], registry, seen)
            continue
        kind, is_list = found
        if value is None:
            continue
        if is_list:
            resolved = [_resolve_one(kind, v, path + [name, i], registry, seen) for i, v in enumerate(value)]
            object.__setattr__(obj, name, resolved)
        else:
            object.__setattr__(obj, name, _resolve_one(kind, value, path + [name], registry, seen))


def _resolve_one(kind: str, spec: Spec, path: list, registry: Registry, seen: list) -> Spec:
    where = _dotted(path + ["type"])
    cls = registry.get(kind, spec.type, where=where)
    schema = getattr(cls, "Config", None)
    if schema is None:
        raise ConfigError(f"{where}: plugin class {cls.__name__} declares no Config schema")
    try:
        cfg = schema.model_validate(spec.model_dump())
    except ValidationError as e:
        raise ConfigError(_format(e, schema, path)) from None
    seen.append((kind, spec.type))
    _resolve_components(cfg, path, registry, seen)
    return cfg


def _trial_device(device: str) -> str:
    """Where the optimizer is tried: cuda or cpu where the run would train here, or ``elsewhere``
    for a CUDA run read on a machine without CUDA (to evaluate it, say)."""
    import torch

    if device == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu" if device == "auto" else "elsewhere"


def _check_optimizer(cfg: OptimizerConfig, path: list, device: str = "cpu") -> None:
    import torch

    names = {n.lower(): n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
             and issubclass(getattr(torch.optim, n), torch.optim.Optimizer) and n != "Optimizer"}
    if cfg.type.lower() not in names:
        hint = difflib.get_close_matches(cfg.type.lower(), list(names), n=1)
        dym = f"; did you mean '{hint[0]}'?" if hint else ""
        raise ConfigError(f"{_dotted(path + ['type'])}: unknown optimizer '{cfg.type}'{dym} "
                          f"(allowed: {', '.join(sorted(names))})")
    params = inspect.signature(getattr(torch.optim, names[cfg.type.lower()])).parameters
    extra = dict(cfg.model_extra or {})
    if names[cfg.type.lower()] == "Muon" and "adamw" in extra:  # options of the AdamW half (parallax/optim.py)
        side = extra.pop("adamw")
        if not isinstance(side, dict):
            raise ConfigError(f"{_dotted(path + ['adamw'])}: must be a mapping of torch.optim.AdamW options "
                              f"(got {side!r})")
        try:
            side_cfg = OptimizerConfig.model_validate({**side, "type": "adamw"})
        except ValidationError as e:
            raise ConfigError(_format(e, OptimizerConfig, path + ["adamw"])) from None
        _check_optimizer(side_cfg, path + ["adamw"])
    for key in extra:
        if key not in params or key in ("params", "self"):
            allowed = ([p for p in params if p not in ("params", "self")]
                       + (["adamw"] if names[cfg.type.lower()] == "Muon" else []))
            hint = difflib.get_close_matches(key, allowed, n=1)
            dym = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"{_dotted(path + [key])}: not an option of torch.optim.{names[cfg.type.lower()]}{dym} "
                              f"(allowed: {', '.join(allowed)})")
    if path == ["train", "optimizer"]:
        _try_optimizer(cfg, names[cfg.type.lower()], path, device)


def _try_optimizer(cfg: OptimizerConfig, name: str, path: list, device: str = "cpu") -> None:
    """Build the optimizer on a toy model, as the trainer builds it, and take one step, so that a
    bad option value (``betas: 5``) or an optimizer the trainer cannot drive (LBFGS wants a closure,
    SparseAdam sparse gradients) fails here, in one line, and not after the run has started."""
    import torch

    from .optim import make_optimizer

    if device == "elsewhere" and (cfg.model_extra or {}).get("capturable"):
        return  # a CUDA-only option of a CUDA run: it can only be tried where the run will train
    device = "cpu" if device == "elsewhere" else device
    with torch.random.fork_rng(devices=[]):
        toy = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)).to(device)
        try:
            opt = make_optimizer(toy, cfg)
            toy(torch.ones(2, 4, device=device)).square().sum().backward()
            opt.step()
        except Exception as e:  # torch raises TypeError, ValueError or RuntimeError for these
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"{_dotted(path)}: torch.optim.{name} cannot train with these options ({msg}); "
                              f"fix the option, or choose another train.optimizer.type") from None


def _dotted(parts: list) -> str:
    return ".".join(str(p) for p in parts)


def _format(err: ValidationError, schema: type[BaseModel], prefix: list) -> str:
    errors = err.errors()
    # A misspelt key (modle) also leaves the key it meant (model) missing. Report the misspelling
    # first, with its did-you-mean, and do not count the missing key that it explains.
    hints = [_close_key(schema, list(x["loc"])) if x["type"] == "extra_forbidden" else None for x in errors]
    meant = {(*x["loc"][:-1], h) for x, h in zip(errors, hints) if h}
    kept = [(x, h) for x, h in zip(errors, hints) if not (x["type"] == "missing" and tuple(x["loc"]) in meant)]
    e, hint = next(((x, h) for x, h in kept if h), kept[0])
    errors = [x for x, _ in kept]
    loc = list(e["loc"])
    where = _dotted(prefix + loc) or "recipe"
    more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if e["type"] == "extra_forbidden":
        allowed = _fields_at(schema, loc[:-1])
        dym = f"; did you mean '{hint}'?" if hint else ""
        return f"{where}: unknown key{dym} (allowed: {', '.join(allowed)}){more}"
    if e["type"] == "missing":
        return f"{where}: required key is missing{more}"
    got = e.get("input")
    if e["type"] == "value_error" and isinstance(got, dict):  # a check across keys: its message names them
        return f"{where}: {e['msg'].removeprefix('Value error, ')}{more}"
    shown = _short(repr(got)) if not isinstance(got, (dict, list)) or len(repr(got)) < 60 else type(got).__name__
    return f"{where}: {e['msg'].removeprefix('Value error, ')} (got {shown}){more}"


def _close_key(schema: type[BaseModel], loc: list) -> str | None:
    """The allowed key closest to the unknown one at ``loc``, if any is close."""
    hint = difflib.get_close_matches(str(loc[-1]), _fields_at(schema, loc[:-1]), n=1)
    return hint[0] if hint else None


def _fields_at(schema: type[BaseModel], loc: list) -> list[str]:
    cls: Any = schema
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(cls, "model_fields", {})
        if part not in fields:
            return []
        ann = fields[part].annotation
        for arg in (ann, *typing.get_args(ann)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                cls = arg
                break
        else:
            return []
    return list(getattr(cls, "model_fields", {}))
