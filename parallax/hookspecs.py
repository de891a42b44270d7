"""pluggy hook specifications: one register-callback hook per component kind.

A plugin implements any of these with ``@parallax.hookimpl`` and calls ``register(name, cls)``
for each component it provides. ``cls`` is a class with a nested pydantic ``Config``.
"""
import pluggy

hookspec = pluggy.HookspecMarker("parallax")

#: registry kind -> hook name. The registry and `parallax plugins` iterate this.
KINDS = {
    "models": "register_models",
    "encoders": "register_encoders",
    "experts": "register_experts",
    "workspaces": "register_workspaces",
    "decoders": "register_decoders",
    "halting_rules": "register_halting_rules",
    "data_sources": "register_data_sources",
    "loggers": "register_loggers",
}


@hookspec
def register_models(register):
    """Register whole-model classes (``type`` under ``model:``), e.g. the CWS or a baseline."""


@hookspec
def register_encoders(register):
    """Register ``Encoder`` subclasses (raw input -> observations (B,T,d))."""


@hookspec
def register_experts(register):
    """Register ``Expert`` subclasses (context -> proposals (B,T,S_e,d))."""


@hookspec
def register_workspaces(register):
    """Register ``Workspace`` subclasses (the K-step inner loop)."""


@hookspec
def register_decoders(register):
    """Register ``MotorDecoder`` subclasses (settled h -> outputs)."""


@hookspec
def register_halting_rules(register):
    """Register ``HaltingRule`` subclasses (when a position stops its K loop)."""


@hookspec
def register_data_sources(register):
    """Register ``DataSource`` subclasses (batches and a fixed validation set)."""


@hookspec
def register_loggers(register):
    """Register ``Logger`` subclasses (``train.loggers``: where training records and evaluations go)."""
