"""Halting rules: ``momentum`` (the seed's raw-momentum saturation readout) and ``fixed`` (always k_max).

Seed 001 §04: "Equilibrium is detected via a raw-momentum readout - not by chasing the difference
between successive hidden states to zero." The movement m_k = RMS(raw_k - raw_{k-1}) over heads
and slots is the momentum; a position halts once m_k stops changing (|m_k - m_{k-1}| <=
rel_tol * m_{k-1}: the movement has saturated, whether at a fixed point or on a steady orbit), or
once m_k < abs_tol. Every test is elementwise over positions, so positions halt independently.
"""
from __future__ import annotations

import torch
from pydantic import Field

import parallax


class MomentumHalting(parallax.HaltingRule):
    class Config(parallax.Spec):
        type: str = "momentum"
        rel_tol: float = Field(0.05, ge=0, description="halt when |m_k - m_{k-1}| <= rel_tol * m_{k-1}")
        abs_tol: float = Field(1e-3, ge=0, description="halt when the movement m_k < abs_tol")
        k_min: int = Field(2, ge=1, description="no position halts before this many steps")

    def update(self, raw, prev_raw, memo, k):
        if prev_raw is None:
            return torch.zeros(raw.shape[:2], dtype=torch.bool, device=raw.device)
        m = parallax.movement(raw, prev_raw)  # (B,T)
        prev_m = memo.get("m")
        memo["m"] = m
        halt = m < self.cfg.abs_tol
        if prev_m is not None:
            halt = halt | ((m - prev_m).abs() <= self.cfg.rel_tol * prev_m)
        return halt & (k >= self.cfg.k_min)


class FixedHalting(parallax.HaltingRule):
    class Config(parallax.Spec):
        type: str = "fixed"

    def update(self, raw, prev_raw, memo, k):
        return torch.zeros(raw.shape[:2], dtype=torch.bool, device=raw.device)


@parallax.hookimpl
def register_halting_rules(register):
    register("momentum", MomentumHalting)
    register("fixed", FixedHalting)
