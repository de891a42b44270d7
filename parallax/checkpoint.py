"""Checkpoints: ``out_dir/step-XXXXXXXX/{model.safetensors, config.yaml, trainer_state.safetensors,
trainer_state.json}``, plus the data source's files (a text run's ``tokenizer.json``).

Nothing in a checkpoint is code: the weights and every tensor of the trainer state (optimizer
moments, the torch RNG state, numpy's RNG array) are safetensors, the rest of the trainer state
(step, schedule, Python's RNG state, optimizer options) is JSON (see ``statefile``). A checkpoint of
the older format, with a pickled ``trainer_state.pt``, is refused in one line; ``convert_legacy``
(``parallax convert-checkpoint PATH --trust-pickle``) rewrites it without running code from it.

A save is atomic and durable: the files are written into a temporary sibling folder
(``.tmp-step-XXXXXXXX-PID``), each file and the folder are fsynced, the folder is renamed into place
and the parent fsynced, so a crash or a kill leaves either the complete new ``step-*`` or none.
Re-saving a step swaps the new folder with the old one in one rename where the filesystem can
(``renameat2(RENAME_EXCHANGE)``), else renames the old one aside first; either way the older copy
is there until the new one is. ``clean_stale`` removes the temporary folders of dead processes (and
puts back a step a crash left aside). A failed save (a full disk) removes its temporary folder and
raises one ``CheckpointError`` naming the newest intact checkpoint.

The safetensors metadata records the registry names the model uses and the plugins (with versions)
that provide them, so a checkpoint whose plugin is missing can name the package to install.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import statefile
from .errors import CheckpointError
from .registry import Registry

STEP_RE = re.compile(r"^step-(\d{8})$")
STALE_RE = re.compile(r"^\.(tmp|old)-(step-\d{8})-(\d+)$")  # a save's temporary folder, or a step set aside
FORMAT = "parallax-cws/1"
STATE_TENSORS, STATE_JSON = "trainer_state.safetensors", "trainer_state.json"
LEGACY_STATE = "trainer_state.pt"  # the pickled trainer state of older checkpoints


def step_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"step-{step:08d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``out_dir``, oldest first."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name) and (p / "model.safetensors").is_file()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def latest(out_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def newest_inside(path: str | Path) -> Path | None:
    """The newest checkpoint of ``path`` when ``path`` is a run directory rather than a checkpoint."""
    p = Path(path)
    if (p / "model.safetensors").exists() or not p.is_dir():
        return None
    return latest(p)


def components_used(components: list[tuple[str, str]], registry: Registry) -> dict[str, str]:
    """``{"experts/mamba_siso": "dist==version", ...}`` for the recipe's (kind, name) components."""
    used = {}
    for kind, name in components:
        p = registry.entry(kind, name).plugin
        used[f"{kind}/{name}"] = f"{p.dist or p.name}=={p.version or '?'}"
    return used


def state_tensors(model: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict (of a module, or given) as safetensors stores it: detached, contiguous, on the CPU.

    Tensors that share memory stay shared, so safetensors refuses a module that registers one
    tensor under two names (a tied weight belongs to one module only).
    """
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    trainer_state: dict,
    config_yaml: str,
    metadata: dict[str, str],
    keep_last_n: int | None = None,
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write a checkpoint; ``files`` are the data source's own (a tokenizer), copied in beside the weights.

    Raises ``CheckpointError`` (one line: the problem, the fix, the newest intact checkpoint) for
    any ``OSError`` on the way, a full disk included, after removing what it wrote.
    """
    root = Path(out_dir)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        clean_stale(root)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        statefile.save_tensors(state_tensors(model), tmp / "model.safetensors", {"format": FORMAT, **metadata})
        (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
        statefile.dump(trainer_state, tmp / STATE_TENSORS, tmp / STATE_JSON)
        for name, content in (files or {}).items():
            (tmp / name).write_bytes(content)
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        _put_in_place(tmp, final)
        _fsync(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(_save_failed(e, final, root)) from None
    if keep_last_n:
        for old in list_checkpoints(out_dir)[:-keep_last_n]:
            _remove(old)
    return final


def _remove(ck: Path) -> None:
    """Remove a checkpoint: renamed to a temporary name first, so a kill midway leaves no half of a step."""
    doomed = ck.parent / f".tmp-{ck.name}-{os.getpid()}"
    try:
        shutil.rmtree(doomed, ignore_errors=True)
        os.rename(ck, doomed)
    except OSError:
        return  # kept: an old checkpoint that cannot be removed is no reason to stop a run
    shutil.rmtree(doomed, ignore_errors=True)


def clean_stale(out_dir: str | Path) -> list[Path]:
    """Remove the temporary folders that dead processes left in ``out_dir``; return what was removed.

    A ``.tmp-step-*-PID`` folder is an unfinished save (or, after a swap, the replaced copy) and goes.
    A ``.old-step-*-PID`` folder is a step set aside while a re-save renamed the new copy in: it goes
    when the step is in place, and is renamed back when the process died between the two renames.
    Folders of live processes are left alone; this process's own are stale, as it is not saving.
    """
    root = Path(out_dir)
    if not root.is_dir():
        return []
    removed = []
    for p in sorted(root.iterdir()):
        m = STALE_RE.match(p.name)
        if m is None or not p.is_dir():
            continue
        pid = int(m.group(3))
        if pid != os.getpid() and process_alive(pid):  # this process's own are stale: it is not saving
            continue
        final = root / m.group(2)
        if m.group(1) == "old" and not final.exists():
            os.rename(p, final)
            _fsync(root)
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host is running (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _put_in_place(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final``; an existing ``final`` is never missing meanwhile."""
    if not final.exists():
        os.rename(tmp, final)
        return
    if _exchange(tmp, final):  # one atomic swap: tmp now holds the old copy
        _fsync(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    aside = final.parent / f".old-{final.name}-{os.getpid()}"
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(final, aside)
    try:
        os.rename(tmp, final)
    except OSError:
        os.rename(aside, final)
        raise
    _fsync(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where that is unavailable."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _save_failed(e: OSError, final: Path, root: Path) -> str:
    problem = e.strerror or str(e).splitlines()[0] or type(e).__name__
    where = f" (writing {Path(e.filename).name})" if e.filename else ""  # the temporary folder is gone
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on the disk of {root} and resume with train.resume=auto, or choose another out_dir=..."
    else:
        fix = f"make {root} writable and resume with train.resume=auto, or choose another out_dir=..."
    intact = [c for c in list_checkpoints(root) if _intact(c)]
    if intact:
        keep = f"the newest intact checkpoint is {intact[-1]} (train.resume={intact[-1]} from another out_dir)"
    else:
        keep = "no earlier checkpoint of this run is intact"
    return f"could not save checkpoint {final.name}: {problem}{where}; {fix}; {keep}"


def _intact(path: Path) -> bool:
    try:
        check_intact(path)
        statefile.check_tensors(path / "model.safetensors")
    except (CheckpointError, ValueError, OSError):
        return False
    return True


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    f = Path(path) / "model.safetensors"
    try:
        with safe_open(str(f), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{f}: not a readable safetensors file ({e}); use an earlier step-* folder "
                              f"(train.resume=PATH to train on from it)") from None


def metadata_json(path: str | Path, *keys: str) -> dict[str, dict[str, str]]:
    """The ``{str: str}`` mappings that ``save`` wrote as JSON under ``keys`` in the weights' header,
    read once: ``{key: mapping}``.

    The header is not covered by the tensors' own checks, so a flipped byte there is refused here
    in one line rather than reaching ``json.loads``'s traceback.
    """
    f = Path(path) / "model.safetensors"
    meta = read_metadata(path)
    found = {}
    for key in keys:
        try:
            value = json.loads(meta.get(key, "{}"))
        except ValueError:
            value = None
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise CheckpointError(f"{f}: damaged (its header's '{key}' entry is not the JSON mapping it was saved "
                                  f"as); use an earlier step-* folder (train.resume=PATH to train on from it)")
        found[key] = value
    return found


def check_plugins(path: str | Path, registry: Registry) -> None:
    """Raise a one-line error naming the package to install when a component is not registered."""
    used = metadata_json(path, "components")["components"]
    for key, provider in used.items():
        kind, _, name = key.partition("/")
        if kind in registry.entries and name not in registry.entries[kind]:
            skipped = registry.skipped.get(provider.split("==")[0])
            if skipped:
                raise CheckpointError(f"{path}: needs {kind[:-1].replace('_', ' ')} '{name}' from {provider}, which is "
                                      f"installed but {skipped}; change that variable")
            raise CheckpointError(
                f"{path}: needs {kind[:-1].replace('_', ' ')} '{name}' from {provider}, which is not installed; "
                f"pip install {provider.split('==')[0]}"
            )


def load_model_state(path: str | Path, model: torch.nn.Module) -> None:
    f = Path(path) / "model.safetensors"
    if not f.is_file():
        newest = newest_inside(path)
        if newest is not None:  # a run's out_dir, not one of its checkpoints
            raise CheckpointError(f"{path}: is a run directory, not a checkpoint; name one of its step folders, "
                                  f"such as {newest}")
        raise CheckpointError(f"{path}: no model.safetensors; not a checkpoint directory (expected step-XXXXXXXX/)")
    exported = (Path(path) / "config.json").is_file() and not (Path(path) / "config.yaml").is_file()
    if not exported:  # an export folder (parallax export) holds weights only, by design
        check_intact(path)
    try:
        state = load_file(str(f))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{f}: corrupt or unreadable ({str(e).splitlines()[0]}); use an earlier step-* folder "
                              f"(train.resume=PATH to train on from it)") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{f}: does not match the recipe's model ({_first_mismatch(str(e))}); "
                              f"use the recipe it was trained with") from None


def _first_mismatch(message: str) -> str:
    """The first informative line of load_state_dict's error: a size mismatch, or the missing/unexpected keys."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    detail = next((ln for ln in lines[1:] if ln.startswith(("size mismatch", "Missing key", "Unexpected key"))), None)
    if detail is None:
        return lines[0] if lines else "unknown difference"
    return detail if len(detail) <= 300 else detail[:297] + "..."


def check_intact(path: str | Path) -> None:
    """Raise one ``CheckpointError`` unless ``path``'s trainer state is in this format and readable.

    Every load calls it first, the weights-only ones too (eval, generate, bench): a checkpoint of
    the older, pickled format is named as such with the command that converts it, and a damaged one
    is refused whole rather than half used. Reads the JSON and the safetensors header, not the tensors.
    """
    p = Path(path)
    if not (p / STATE_JSON).exists():
        if (p / LEGACY_STATE).exists():
            raise CheckpointError(
                f"{p}: its {LEGACY_STATE} is a pickle (the checkpoint format before {STATE_JSON}), which can run "
                f"code when loaded and is not loaded; if you trust where it came from, convert it with "
                f"`parallax convert-checkpoint {p} --trust-pickle`")
        raise CheckpointError(f"{p}: no {STATE_JSON}; the checkpoint is incomplete; use an earlier step-* folder "
                              f"(train.resume=PATH to train on from it)")
    for name, check in ((STATE_JSON, statefile.read_document), (STATE_TENSORS, statefile.check_tensors)):
        try:
            check(p / name)
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{p / name}: damaged ({_reason(e)}); use an earlier step-* folder "
                                  f"(train.resume=PATH to train on from it)") from None


def _reason(e: Exception) -> str:
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    text = (text.splitlines() or [type(e).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def load_trainer_state(path: str | Path) -> dict:
    """The trainer state ``save`` wrote: step, optimizer, scheduler, scaler and RNG states, as saved."""
    p = Path(path)
    check_intact(p)
    try:
        state = statefile.load(p / STATE_TENSORS, p / STATE_JSON)
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{p / STATE_JSON}: damaged ({_reason(e)}); use an earlier step-* folder "
                              f"(train.resume=PATH to train on from it)") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{p / STATE_JSON}: damaged (holds a {type(state).__name__}, not the trainer state); "
                              f"use an earlier step-* folder (train.resume=PATH to train on from it)")
    return state


def convert_legacy(path: str | Path) -> list[Path]:
    """Rewrite the pickled ``trainer_state.pt`` of ``path`` (a checkpoint, or a run directory: each of
    its checkpoints) as ``trainer_state.safetensors`` + ``.json``; returns the checkpoints converted.

    Only for files whose source is trusted, yet it runs no code from them either: the pickle is
    read by ``torch.load(weights_only=True)``, which builds tensors, containers, numbers and the
    numpy array and dtype of numpy's RNG state, and refuses anything else.
    """
    p = Path(path)
    if (p / "model.safetensors").is_file():
        found = [p]
    elif p.is_dir() and list_checkpoints(p):
        found = [c for c in list_checkpoints(p) if (c / LEGACY_STATE).exists() and not (c / STATE_JSON).exists()]
    else:
        raise CheckpointError(f"{p}: not a checkpoint (step-XXXXXXXX/) or a run directory that holds checkpoints")
    if found == [p] and not (p / LEGACY_STATE).exists():
        raise CheckpointError(f"{p}: holds no {LEGACY_STATE}; nothing to convert")
    converted = []
    for ck in found:
        if (ck / STATE_JSON).exists():
            continue  # converted already (the .pt was kept beside it)
        state = _read_legacy(ck / LEGACY_STATE)
        try:
            for name in (STATE_TENSORS, STATE_JSON):
                (ck / f".{name}.tmp").unlink(missing_ok=True)
            statefile.dump(state, ck / f".{STATE_TENSORS}.tmp", ck / f".{STATE_JSON}.tmp")
            for name in (STATE_TENSORS, STATE_JSON):  # the JSON last: its presence marks the new format
                _fsync(ck / f".{name}.tmp")
                os.replace(ck / f".{name}.tmp", ck / name)
            _fsync(ck)
            (ck / LEGACY_STATE).unlink()
            _fsync(ck)
        except OSError as e:
            raise CheckpointError(f"{ck}: could not write the converted trainer state ({_reason(e)}); "
                                  f"free space or make the folder writable, and convert again") from None
        converted.append(ck)
    return converted


def _read_legacy(f: Path) -> dict:
    import numpy as np

    reconstruct = (getattr(np, "_core", None) or np.core).multiarray._reconstruct
    allowed = [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)),
               (reconstruct, "numpy.core.multiarray._reconstruct"),  # its name in a pickle numpy 1 wrote
               (reconstruct, "numpy._core.multiarray._reconstruct")]
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler raises UnpicklingError, truncated files several types
        detail = _reason(e).split(" Please file")[0]
        raise CheckpointError(f"{f}: not converted: it holds more than tensors, numbers and numpy arrays, or is "
                              f"damaged ({type(e).__name__}: {detail})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{f}: not converted: holds a {type(state).__name__}, not a trainer state")
    return state
