"""``parallax.testing``: the conformance kit and pytest plugin for plugin authors.

Enable the plugin with one line in your tests' ``conftest.py``::

    pytest_plugins = ["parallax.testing"]

Fixtures (see ``fixtures``): ``tiny_recipe``, ``make_tiny_recipe``, ``register_plugin``.

Conformance checks, by component name (through the installed entry point) or by class::

    from parallax.testing import assert_expert_conforms
    assert_expert_conforms("my_expert")                  # defaults of its Config
    assert_expert_conforms(MyExpert, {"slots": 3})       # other options

Each runs every check of its protocol (shapes and dtypes, clock semantics, causality, incremental
step == parallel forward, state-dict and safetensors round trips, autocast, frozen steps under
``torch.no_grad()`` followed by a live step) and raises ``ConformanceError`` listing each failed
check on its own line. ``skip=("autocast",)`` leaves out checks by name.

Also: ``registered(plugin)`` (a context manager), ``train(recipe, out_dir, steps=5)`` and
``write_tiny_recipe(path, out_dir, experts=[...])``.
"""
from .conformance import ConformanceError
from .decoders import assert_decoder_conforms
from .encoders import assert_encoder_conforms
from .experts import assert_expert_conforms
from .fixtures import make_tiny_recipe, register_plugin, tiny_recipe
from .plugins import registered
from .recipes import tiny_recipe_data, train, write_tiny_recipe
from .workspaces import assert_workspace_conforms

__all__ = [
    "ConformanceError", "assert_expert_conforms", "assert_encoder_conforms", "assert_decoder_conforms",
    "assert_workspace_conforms", "registered", "train", "tiny_recipe_data", "write_tiny_recipe",
    "tiny_recipe", "make_tiny_recipe", "register_plugin",
]
