"""Built-in data sources."""
import parallax

from .recall import RecallData


@parallax.hookimpl
def register_data_sources(register):
    register("recall", RecallData)
