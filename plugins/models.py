"""Registers the CWS model assembly under the name ``cws``."""
import parallax


@parallax.hookimpl
def register_models(register):
    register("cws", parallax.CWSModel)
