"""Kernels for Parallax. Each fused kernel sits next to a pure-PyTorch reference with the same
signature. This package imports nothing from ``parallax`` or ``parallax_plugins``."""
