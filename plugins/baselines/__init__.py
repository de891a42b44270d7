"""Registers the baseline language models: ``transformer`` and ``dualtrack``."""
import parallax

from .dualtrack import DualTrack
from .transformer import Transformer


@parallax.hookimpl
def register_models(register):
    register("transformer", Transformer)
    register("dualtrack", DualTrack)
