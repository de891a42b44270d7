"""Parallax's built-in plugins. They register through the ``parallax`` entry-point group, exactly as
third-party plugins do, and import only the public ``parallax`` API (and ``parallax_kernels``)."""
