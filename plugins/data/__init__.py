"""Built-in data sources: synthetic recall, TinyStories text, and labelled images."""
import parallax

from .images import DigitsData, HubImageData
from .recall import RecallData
from .tinystories import TinyStoriesData


@parallax.hookimpl
def register_data_sources(register):
    register("recall", RecallData)
    register("tinystories", TinyStoriesData)
    register("digits", DigitsData)
    register("hf_images", HubImageData)
