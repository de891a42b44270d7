"""Parallax: a plugin-based PyTorch framework for the Central Workspace (CWS).

This module is the public API that plugins import; everything else in the package is internal.
The modules, one sentence each:

- ``protocols``: the contracts every plugin implements (``Model``, ``Encoder``, ``Expert``,
  ``Workspace``, ``MotorDecoder``, ``HaltingRule``, ``DataSource``, ``Tokenizer``).
- ``schema``: the typed recipe schema, and ``Spec``, the base of every plugin's options.
- ``errors``: user-facing errors, one line naming the problem and the fix (the CLI exits 2).
- ``nn``: RMSNorm and rotary embeddings, shared by the core and plugins.
- ``registry`` / ``hookspecs``: entry points in the group ``parallax`` -> pluggy -> components by kind.
- ``recipe``: YAML plus ``key=value`` overrides -> a validated ``Recipe``; ``safe_yaml`` reads the
  YAML with duplicate keys and alias bombs refused; ``recipe_doc`` prints the schema as documentation.
- ``kloop``: the K loop that settles every position under the O(1)-memory training contract.
- ``model``: the CWS model assembled from registered components, and ``build_model``.
- ``optim``: optimizers by name (Muon + AdamW included) and the learning-rate schedule.
- ``build``: a run's data source, device, autocast precision and seeded RNGs.
- ``budget``: the training memory estimated from the recipe and refused before allocation.
- ``checkpoint``: atomic, durable ``step-XXXXXXXX/`` folders; ``statefile`` stores nested state as
  safetensors plus JSON, so no load runs code.
- ``resume``: which checkpoint ``train.resume`` names, and restoring the trainer's state from it.
- ``rundir``: one run per ``out_dir`` (a lock), and no run overwriting another's records.
- ``callbacks``: the trainer's events; ``loggers``: the loggers plugin kind; ``metrics``: the
  metrics.jsonl file; ``progress``: the progress bar and plain log lines.
- ``distributed``: all-reduces whose tensors live on the process group's device.
- ``trainer``: the training loop and its state.
- ``evaluate``: validation loss, accuracy or perplexity and bits per byte, K per kind and per surprisal.
- ``generate``: incremental generation through the model's ``decode_step``.
- ``runs``: opening recipes, runs and checkpoints as the commands do; ``export``: Hugging Face-style
  export folders and ``load_pretrained``.
- ``diagnostics``: numbers components report about themselves, logged with the metrics.
- ``plot`` / ``report``: PNG figures of a run, and one self-contained HTML page with its K map.
- ``bench``: the benchmarks behind ``parallax bench``; ``testing``: the plugin authors' conformance
  kit and pytest plugin; ``scaffold``: ``parallax new-plugin``; ``cli``: the command line.
"""
import pluggy

__version__ = "0.1.0"

#: Decorator for plugin hook implementations: ``@parallax.hookimpl def register_experts(register): ...``
hookimpl = pluggy.HookimplMarker("parallax")

from .errors import CheckpointError, ConfigError, ParallaxError, PluginError, TrainingError  # noqa: E402
from .export import load_pretrained  # noqa: E402
from .kloop import movement  # noqa: E402
from .loggers import Logger  # noqa: E402
from .model import CWSModel, build_component, build_model  # noqa: E402
from .nn import RMSNorm, apply_rope, rope_angles  # noqa: E402
from .protocols import (  # noqa: E402
    DataInfo,
    DataSource,
    Encoder,
    Expert,
    HaltingRule,
    Model,
    ModelOutput,
    MotorDecoder,
    Tokenizer,
    Workspace,
    WorkspaceState,
)
from .schema import Component, Spec  # noqa: E402

__all__ = [
    "hookimpl", "Spec", "Component", "DataInfo", "Model", "ModelOutput", "Encoder", "Expert", "Workspace",
    "WorkspaceState", "MotorDecoder", "HaltingRule", "DataSource", "Tokenizer", "CWSModel", "build_model",
    "build_component", "movement", "RMSNorm", "apply_rope", "rope_angles", "ParallaxError", "ConfigError",
    "PluginError", "CheckpointError", "TrainingError", "Logger", "load_pretrained",
]
