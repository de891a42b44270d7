"""The dual-track swap transformer (seed 002): two stacks of transformer blocks that trade outputs.

Shapes: B batch, T positions, d = n_embd, V vocabulary.

tokens (B,T) -> x = embedding (B,T,d). Tracks A and B (each n_layer ``Block``s, separate weights)
both read x on the first pass. Each further pass reuses the same weights (weight-tied passes);
between passes, with ``use_swap`` each track reads the other's output plus x
(in_a = out_b + x, in_b = out_a + x), without it each reads its own output plus x. After
``num_loops`` passes: head(RMSNorm(out_a + out_b)) -> logits (B,T,V). ``num_loops = 1`` is a
parallel ensemble of two transformers sharing an embedding and head.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from parallax import DataInfo, Model, ModelOutput, RMSNorm, rope_angles

from .transformer import Block, TransformerOptions, build_io, embed, head_logits, init_weights


class DualTrack(Model):
    """``forward(inputs (B,T)) -> ModelOutput(logits (B,T,V), k=None)``."""

    width_key = "n_embd"

    class Config(TransformerOptions):
        type: str = "dualtrack"
        n_layer: int = Field(6, ge=1, description="blocks per track")
        n_head: int = Field(4, ge=1, description="query heads")
        n_kv_heads: int = Field(2, ge=1, description="key/value heads (GQA); must divide n_head")
        n_embd: int = Field(512, ge=1, description="model width d; must be divisible by n_head")
        num_loops: int = Field(2, ge=1, description="passes through each track; num_loops - 1 exchanges")
        use_swap: bool = Field(True, description="between passes, feed each track the other's output (else its own)")
        dropout: float = Field(0.0, ge=0, lt=1,
                               description="dropout on the embedding and on each block's residual branches")

    def __init__(self, cfg: DualTrack.Config, info: DataInfo, registry=None):
        super().__init__()
        self.cfg = cfg
        d = cfg.n_embd

        def track() -> nn.ModuleList:
            return nn.ModuleList(
                Block(d, cfg.n_head, cfg.n_kv_heads, cfg.hidden, cfg.norm_eps, cfg.dropout, cfg.attention, cfg.block)
                for _ in range(cfg.n_layer)
            )

        # tied: the head reads the embedding table, which is then saved once in checkpoints
        build_io(self, cfg, info, registry, "dualtrack")
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.track_a, self.track_b = track(), track()
        self.norm = RMSNorm(d, eps=cfg.norm_eps)
        init_weights(self)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Output head: (B,T,d) -> (B,T,V)."""
        return head_logits(self, h)

    @staticmethod
    def run_track(track: nn.ModuleList, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """One pass of a track: (B,T,d) -> (B,T,d)."""
        for blk in track:
            h, _ = blk(h, cos, sin)
        return h

    def forward(self, inputs: torch.Tensor) -> ModelOutput:
        x = self.drop(embed(self, inputs))  # (B,T,d)
        pos = torch.arange(x.shape[1], device=inputs.device)
        cos, sin = rope_angles(pos, self.cfg.n_embd // self.cfg.n_head, self.cfg.rope_base)  # (T,hd/2)
        in_a = in_b = x
        for i in range(self.cfg.num_loops):
            out_a = self.run_track(self.track_a, in_a, cos, sin)  # (B,T,d)
            out_b = self.run_track(self.track_b, in_b, cos, sin)  # (B,T,d)
            if i + 1 < self.cfg.num_loops:
                # x is added back on every exchange so each pass still sees the tokens themselves
                if self.cfg.use_swap:
                    in_a, in_b = out_b + x, out_a + x
                else:
                    in_a, in_b = out_a + x, out_b + x
        return ModelOutput(logits=self.logits(self.norm(out_a + out_b)), k=None)  # (B,T,V)
