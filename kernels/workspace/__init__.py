"""The CWS workspace step: raw logits, cum update with decay toward 1, log1p(silu) weights, weighted sum."""
from .naive import workspace_step_ref

__all__ = ["workspace_step_ref"]
