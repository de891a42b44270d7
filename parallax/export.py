"""Exporting a trained run as a self-contained folder, Hugging Face style, and loading it back.

``export(run, dest)`` writes the run's newest checkpoint (or the ``step-XXXXXXXX/`` folder given):

- ``config.json``: the resolved recipe, the registry name of every component with the plugin
  distribution and version that provides it, and the plugins installed when it was trained (all
  from the checkpoint's safetensors metadata);
- ``model.safetensors``: the weights, byte for byte, with their metadata;
- the data source's files (a text run's ``tokenizer.json``);
- ``README.md``: a short model card.

``load_pretrained(dest)`` (``parallax.load_pretrained``) rebuilds the model from these files alone,
with no data and no pickle; ``parallax eval`` and ``parallax generate`` take the folder as they take
a run. ``push(dest, repo)`` uploads the folder with ``huggingface_hub``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from .errors import CheckpointError, ParallaxError
from .runs import CONFIG, is_export, saved_recipe

FORMAT = "parallax-cws-export/1"


def export(run: str | Path, dest: str | Path, force: bool = False) -> Path:
    """Write the export folder ``dest`` from a run directory or checkpoint; returns ``dest``."""
    from . import __version__
    from . import checkpoint as ckpt
    from .runs import find_checkpoint, open_run

    found = find_checkpoint(run)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not force:
        raise CheckpointError(f"{dest}: exists and is not empty; choose a new folder, or pass --force to replace it")
    opened = open_run(found)  # checks that the checkpoint loads into its recipe's model before anything is written
    meta = ckpt.metadata_json(found, "components", "plugins")
    recipe = saved_recipe(found) if is_export(found) else yaml.safe_load((found / "config.yaml").read_text())
    summary = _summary(found)
    config = {
        "format": FORMAT,
        "parallax_version": __version__,
        "model_type": opened.recipe.model.type,
        "data_type": opened.recipe.data.type,
        "step": _step(found) if ckpt.STEP_RE.match(found.name) else _exported(found).get("step"),
        "parameters": sum(p.numel() for p in opened.model.parameters()),
        "vocab_size": opened.data.info.vocab_size,
        "components": meta["components"],
        "plugins": meta["plugins"],
        "recipe": recipe,
        "summary": summary,
    }
    if dest.exists():
        shutil.rmtree(dest)
    tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(found / "model.safetensors", tmp / "model.safetensors")
    for name, content in opened.data.files().items():
        (tmp / name).write_bytes(content)
    (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "README.md").write_text(model_card(config, dest.name))
    os.replace(tmp, dest)
    return dest


def load_pretrained(path: str | Path, device: str = "cpu"):
    """An exported folder (or a run directory, or a checkpoint) -> ``OpenRun`` with ``.model`` (eval
    mode, on ``device``), ``.tokenizer`` (text runs), ``.recipe`` and ``.data``."""
    from .runs import open_run

    return open_run(path, device=device)


def push(dest: str | Path, repo: str) -> str:
    """Upload the export folder ``dest`` to the hub repository ``repo``; returns its URL.

    Raises a one-line ``ParallaxError`` when ``huggingface_hub`` is missing, no token is set, or
    the hub cannot be reached; the export on disk stays as it is."""
    later = f"the export is in {dest}; push it later with `huggingface-cli upload {repo} {dest}`"
    try:
        import huggingface_hub
    except ImportError:
        raise ParallaxError(f"--push: needs huggingface_hub (pip install 'parallax-cws[hub]'); {later}") from None
    token = huggingface_hub.get_token()
    if not token:
        raise ParallaxError(f"--push: no Hugging Face token (set HF_TOKEN or run `huggingface-cli login`); {later}")
    try:
        api = huggingface_hub.HfApi(token=token)
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(dest), repo_id=repo)
    except Exception as e:  # network, authentication, a name the hub refuses: all reported the same way
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ParallaxError(f"--push: cannot push to the hub ({type(e).__name__}: {first}); {later}") from None
    return f"https://huggingface.co/{repo}"


def _exported(found: Path) -> dict:
    return json.loads((found / CONFIG).read_text()) if is_export(found) else {}


def _summary(found: Path) -> dict:
    """The run's summary.json when ``found`` is the run's final checkpoint, else {}."""
    if is_export(found):
        return _exported(found).get("summary", {})
    f = found.parent / "summary.json"
    try:
        summary = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) and summary.get("step") == _step(found) else {}


def _step(found: Path) -> int | None:
    from .checkpoint import STEP_RE

    m = STEP_RE.match(found.name)
    return int(m.group(1)) if m else None


def model_card(config: dict, name: str) -> str:
    """A short README.md: what the model is, how to load it, what it was trained on, and its one run's figures."""
    recipe = config["recipe"]
    train = recipe.get("train", {})
    metrics = {k: v for k, v in config.get("summary", {}).items() if k.startswith("val_") and isinstance(v, float)}
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in metrics.items())
    results = (f"Validation at step {config['step']} (one training run, seed {recipe.get('seed', 0)}; not a mean over "
               f"seeds):\n\n| metric | value |\n|---|---|\n{rows}\n" if rows else "No final evaluation was recorded.\n")
    components = "\n".join(f"- `{k}` from {v}" for k, v in config["components"].items())
    return f"""---
library_name: parallax
tags:
- parallax
- {config['model_type']}
---

# {name}

A `{config['model_type']}` model ({config['parameters']:,} parameters) trained with Parallax
(`pip install parallax-cws`) on `{config['data_type']}` data for {config['step']} steps
({train.get('max_steps', '?')} planned, batch size {train.get('batch_size', '?')}).

## Use

```bash
pip install parallax-cws[text]
parallax generate {name} --prompt "Once upon a time"   # text models
parallax eval {name}
```

```python
import parallax

run = parallax.load_pretrained("{name}")
model, tokenizer = run.model, run.tokenizer
```

## Components

{components}

## Results

{results}
## Files

- `config.json`: the recipe it was trained with, its components and the plugin versions
- `model.safetensors`: the weights
- the data source's files (a text model's `tokenizer.json`)
"""
