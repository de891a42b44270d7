"""Covariance-corrected softmax attention (seed 004): a streaming implementation next to its reference."""
from .naive import covariance_attention_ref
from .streaming import covariance_attention

__all__ = ["covariance_attention", "covariance_attention_ref"]
