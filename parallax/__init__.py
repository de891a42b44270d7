"""Parallax: a plugin-based PyTorch framework for the Central Workspace (CWS).

The public API that plugins import. Everything else in the package is internal.
"""
import pluggy

__version__ = "0.1.0"

#: Decorator for plugin hook implementations: ``@parallax.hookimpl def register_experts(register): ...``
hookimpl = pluggy.HookimplMarker("parallax")

from .export import load_pretrained  # noqa: E402
from .errors import CheckpointError, ConfigError, ParallaxError, PluginError, TrainingError  # noqa: E402
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
