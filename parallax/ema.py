"""An exponential moving average of the weights, used for evaluation and saved with each checkpoint.

TRM ("Less is More", 2025) keeps an EMA of the weights (decay 0.999) and evaluates with it; recurrent
models trained on one live step are noisy from batch to batch, and the average smooths that noise
without changing what the optimizer sees. ``train.ema: DECAY`` turns it on (null, the default, keeps
it off):

    shadow <- decay * shadow + (1 - decay) * weight      after every optimizer step

with the decay warmed up as min(decay, (1 + n) / (10 + n)) over the first n updates, so that the
average does not drag the random initial weights along for thousands of steps. Buffers (the K
schedule's position, normalisation statistics) are copied, not averaged.

Evaluation inside training runs with the shadow weights swapped in (``swapped``); the training weights
come back afterwards. Each checkpoint holds ``ema.safetensors`` beside ``model.safetensors`` (the
training weights, which resume needs), and a resumed run restores the average from it, so the EMA
survives an interrupt. ``parallax eval`` and every command that opens a run use the EMA weights when
the checkpoint has them (``load_ema``).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .callbacks import Callback
from .errors import CheckpointError

FILE = "ema.safetensors"


class EMA(Callback):
    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {}

    # -- trainer events -----------------------------------------------------------------------------
    def on_setup(self, trainer) -> None:
        model = trainer.model
        self.shadow = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                       for k, v in model.state_dict().items()}
        self.updates = 0
        saved = trainer.resume_from
        if saved is not None:
            if (Path(saved) / FILE).is_file():
                self._load(Path(saved), trainer.device)
            elif trainer.is_main:
                trainer.console.print(f"note: {saved} has no {FILE}; the weight average starts again from the "
                                      f"resumed weights")

    @torch.no_grad()
    def on_step(self, trainer, loss: float) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in trainer.model.state_dict().items():
            s = self.shadow[k]
            if v.is_floating_point():
                s.lerp_(v.detach().float(), 1.0 - d)  # s = d * s + (1 - d) * v
            else:
                s.copy_(v)

    def on_save(self, trainer, path: Path) -> None:
        if trainer.is_main:
            tensors = {k: v.detach().contiguous().cpu() for k, v in self.shadow.items()}
            meta = {"decay": str(self.decay), "updates": str(self.updates)}
            save_file(tensors, str(Path(path) / FILE), metadata=meta)

    # -- evaluation with the averaged weights -------------------------------------------------------
    @contextmanager
    def swapped(self, model: torch.nn.Module):
        """Run the block with the shadow weights in ``model``; the training weights come back after."""
        state = model.state_dict()
        backup = {k: v.detach().clone() for k, v in state.items()}
        with torch.no_grad():
            for k, v in state.items():
                v.copy_(self.shadow[k].to(v.dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in state.items():
                    v.copy_(backup[k])

    def _load(self, path: Path, device: torch.device) -> None:
        from safetensors import safe_open

        f = path / FILE
        tensors = load_file(str(f), device=str(device))
        missing = sorted(set(self.shadow) - set(tensors))
        if missing:
            raise CheckpointError(f"{f}: has no '{missing[0]}'; it was saved by another model (remove the file to "
                                  f"start the average again)")
        for k in self.shadow:
            self.shadow[k] = tensors[k].to(self.shadow[k].dtype)
        with safe_open(str(f), "pt") as h:
            self.updates = int((h.metadata() or {}).get("updates", 0))


def load_ema(path: str | Path, model: torch.nn.Module) -> bool:
    """Load a checkpoint's averaged weights into ``model``; False when the checkpoint has none."""
    f = Path(path) / FILE
    if not f.is_file():
        return False
    tensors = load_file(str(f))
    state = model.state_dict()
    with torch.no_grad():
        for k, v in state.items():
            if k not in tensors:
                raise CheckpointError(f"{f}: has no '{k}'; it does not belong to this model's checkpoint")
            v.copy_(tensors[k].to(v.dtype))
    return True
