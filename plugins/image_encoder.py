"""The ``image`` encoder: non-overlapping patches in raster order, each projected to d (DESIGN.md §2.1).

An image (B,C,H,W) becomes T = (H/p)(W/p) observations, row by row, left to right, so the
sequence experts (the Mamba scan, the attention probe) read the image as a raster. No position is
added here: the experts carry it (RoPE in the probe, order in the scan).
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

import parallax


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """images (B,C,H,W) -> patches (B,T,C*p*p) in raster order, T = (H/p)*(W/p)."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p, p, W // p, p)  # (B,C,Hp,p,Wp,p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C * p * p)  # (B,T,C*p*p)


class ImageEncoder(parallax.Encoder):
    class Config(parallax.Spec):
        type: str = "image"
        patch: int = Field(2, ge=1, description="patch side p in pixels; it must divide the image's height and width")

    def __init__(self, cfg: Config, d_model: int, info: parallax.DataInfo):
        super().__init__()
        shape = info.input_shape
        if not shape or len(shape) != 3:
            raise parallax.ConfigError("model.encoder.type: 'image' needs a data source of images shaped (C,H,W)")
        C, H, W = shape
        if H % cfg.patch or W % cfg.patch:
            fits = [p for p in range(1, min(H, W) + 1) if H % p == 0 and W % p == 0]
            raise parallax.ConfigError(
                f"model.encoder.patch: {H}x{W} images do not split into {cfg.patch}x{cfg.patch} patches; "
                f"use a patch size that divides both ({', '.join(map(str, fits))})"
            )
        self.patch, self.shape = cfg.patch, tuple(shape)
        self.proj = nn.Linear(C * cfg.patch * cfg.patch, d_model)
        self.norm = parallax.RMSNorm(d_model)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if tuple(inputs.shape[1:]) != self.shape:
            raise parallax.ConfigError(
                f"model.encoder: got images shaped {tuple(inputs.shape[1:])}, but the model was built for {self.shape}"
            )
        return self.norm(self.proj(patchify(inputs, self.patch)))  # (B,T,d)

    def step(self, inputs_t: torch.Tensor, cache):
        """One patch (B,1,C*p*p) -> x_t (B,1,d); patches carry no history, so the cache stays empty."""
        return self.norm(self.proj(inputs_t)), None
