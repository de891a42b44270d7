"""parallax-signal-experts: two experts from signal processing, as an external Parallax plugin.

- ``causal_conv``: token-clocked multi-scale causal convolution of the observations.
- ``fourier_features``: h-clocked random Fourier features of the workspace read.

Parallax finds this module through the ``parallax`` entry point in pyproject.toml and calls
its hook, exactly as it does for the built-in plugins.
"""
import parallax

from .causal_conv import CausalConv
from .fourier_features import FourierFeatures

__version__ = "0.1.0"


@parallax.hookimpl
def register_experts(register):
    register("causal_conv", CausalConv)
    register("fourier_features", FourierFeatures)
