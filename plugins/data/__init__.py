"""Built-in data sources: synthetic recall and multi-hop lookup, TinyStories text, and labelled images."""
import parallax

from .images import DigitsData, HubImageData
from .multihop import MultiHopData
from .recall import RecallData
from .tinystories import TinyStoriesData


@parallax.hookimpl
def register_data_sources(register):
    register("recall", RecallData)
    register("multihop", MultiHopData)
    register("tinystories", TinyStoriesData)
    register("digits", DigitsData)
    register("hf_images", HubImageData)
