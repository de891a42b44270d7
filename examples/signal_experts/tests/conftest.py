# One line enables Parallax's pytest plugin: the conformance kit's fixtures
# (tiny_recipe, make_tiny_recipe, register_plugin).
pytest_plugins = ["parallax.testing"]
