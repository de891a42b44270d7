"""Validation: loss, accuracy where the task has one, and mean K overall and per token kind."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .protocols import DataSource


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: DataSource, device: torch.device, autocast=None) -> dict:
    was_training = model.training
    model.eval()
    loss_sum = correct = count = 0.0
    k_sum: dict[str, float] = {}
    k_cnt: dict[str, float] = {}
    for batch in data.val_batches():
        inputs, targets = batch["inputs"].to(device), batch["targets"].to(device)
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            out = model(inputs)
        logits = out.logits.float()
        mask = targets != -100
        loss_sum += F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-100, reduction="sum").item()
        correct += (logits.argmax(-1)[mask] == targets[mask]).sum().item()
        count += mask.sum().item()
        if out.k is not None:
            kinds = batch.get("kind")
            groups = {"all": torch.ones_like(out.k, dtype=torch.bool)}
            if kinds is not None:
                kinds = kinds.to(device)
                for code, name in data.kind_names.items():
                    groups[name] = kinds == code
            for name, m in groups.items():
                k_sum[name] = k_sum.get(name, 0.0) + out.k[m].float().sum().item()
                k_cnt[name] = k_cnt.get(name, 0.0) + m.sum().item()
    model.train(was_training)
    result = {"val_loss": loss_sum / max(count, 1)}
    if data.has_accuracy:
        result["val_accuracy"] = correct / max(count, 1)
    for name in k_sum:
        key = "val_k_mean" if name == "all" else f"val_k_mean_{name}"
        result[key] = k_sum[name] / max(k_cnt[name], 1)
    return result
