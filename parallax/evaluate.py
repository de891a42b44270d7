"""Validation: loss, perplexity or accuracy, mean K overall and per token kind, and (``detailed``)
the histogram of K, mean K per surprisal quantile and ``by_kind``, accuracy and mean K per kind.

For text, ``val_bpb`` is bits per byte: the validation targets' total negative log-likelihood in
bits over the UTF-8 bytes they stand for (``DataSource.val_bytes()``), a loss that compares across
tokenizers, since a token of a larger vocabulary stands for more bytes.

The surprisal diagnostic asks whether K allocation follows difficulty: every scored target's
surprisal -log p(target) is paired with the K its position used (for a classifier, whose logits
are per example, the mean K over the example's positions), the targets are split into five
equal-count quantiles of surprisal, and each quantile reports its mean K. A flat profile means K
does not follow surprisal.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from .distributed import sum_over_ranks
from .protocols import DataSource

QUANTILES = 5


def _per_target(logits: torch.Tensor, targets: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Surprisal (N,) and K (N,) of each scored target (targets != -100)."""
    mask = targets != -100
    surprisal = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-100, reduction="none")
    surprisal = surprisal.view(targets.shape)[mask]  # (N,)
    per = k.float() if k.shape == targets.shape else k.float().flatten(1).mean(1)  # (B,T) or (B,) per example
    return surprisal, per[mask]


def _reduce_sums(data, model, loss_sum, correct, count, k_sum, k_cnt, kind_hits):
    """All-reduce every sum of a sharded evaluation in one collective; the dicts are updated in place
    with every name (a kind this rank never saw is counted as zero, and skipped later if all are)."""
    names = ["all", *data.kind_names.values()]
    flat = [loss_sum, correct, count]
    for name in names:
        flat += [k_sum.get(name, 0.0), k_cnt.get(name, 0.0), *kind_hits.get(name, [0.0, 0.0, 0.0])]
    flat = sum_over_ranks(flat)
    for i, name in enumerate(names):
        ks, kc, *hits = flat[3 + 5 * i: 8 + 5 * i]
        if model.has_k_loop:
            k_sum[name], k_cnt[name] = ks, kc
        if name != "all":
            kind_hits[name] = hits
    return flat[0], flat[1], flat[2]


def surprisal_quantiles(surprisal: torch.Tensor, k: torch.Tensor, n: int = QUANTILES) -> list[dict]:
    """Mean K in each of ``n`` equal-count surprisal quantiles, lowest surprisal first."""
    order = surprisal.argsort()
    rows = []
    for i, idx in enumerate(order.tensor_split(n)):
        if idx.numel() == 0:
            continue
        s = surprisal[idx]
        rows.append({"quantile": i + 1, "n": idx.numel(), "surprisal_mean": s.mean().item(),
                     "surprisal_min": s.min().item(), "surprisal_max": s.max().item(), "k_mean": k[idx].mean().item()})
    return rows


def _shard(batches: Iterable[dict], shard: tuple[int, int] | None) -> Iterable[tuple[dict, bool]]:
    """(batch, counted) for this rank: batches rank, rank + world, ... Every rank gets the same number
    of forwards (FSDP gathers weights in each, a collective), so a rank short of one repeats its
    first batch uncounted (or the whole set's, when it has none). One process streams the batches."""
    if shard is None:
        return ((b, True) for b in batches)
    rank, world = shard
    batches = list(batches)
    mine = batches[rank::world]
    rounds = -(-len(batches) // world)  # ceil
    filler = (mine or batches)[0]
    return [(b, True) for b in mine] + [(filler, False)] * (rounds - len(mine))


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: DataSource, device: torch.device, autocast=None,
             detailed: bool = False, shard: tuple[int, int] | None = None) -> dict:
    """Validation metrics over ``data.val_batches()``. ``shard=(rank, world)``: this rank evaluates its
    share of the batches and the sums are all-reduced, so every rank returns the whole set's figures
    (``detailed`` needs the whole set in one process)."""
    if shard is not None and detailed:
        raise ValueError("evaluate: detailed metrics are computed in one process (shard=None)")
    was_training = model.training
    model.eval()
    loss_sum = correct = count = 0.0
    k_sum: dict[str, float] = {}
    k_cnt: dict[str, float] = {}
    kind_hits: dict[str, list[float]] = {}  # name -> [positions, scored targets, correct]
    surprisals, target_ks, all_ks = [], [], []
    for batch, counted in _shard(data.val_batches(), shard):
        inputs, targets = batch["inputs"].to(device), batch["targets"].to(device)
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            out = model(inputs)
        if not counted:
            continue
        logits = out.logits.float()
        mask = targets != -100
        loss_sum += F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-100, reduction="sum").item()
        hit = logits.argmax(-1) == targets  # (B,T) or (B,)
        correct += hit[mask].sum().item()
        count += mask.sum().item()
        if batch.get("kind") is not None and batch["kind"].shape == targets.shape:
            kinds = batch["kind"].to(device)
            for code, name in data.kind_names.items():
                m = kinds == code
                acc = kind_hits.setdefault(name, [0.0, 0.0, 0.0])
                acc[0] += m.sum().item()
                acc[1] += (m & mask).sum().item()
                acc[2] += (hit & m & mask).sum().item()
        if model.has_k_loop:
            kinds = batch.get("kind")
            groups = {"all": torch.ones_like(out.k, dtype=torch.bool)}
            if kinds is not None:
                kinds = kinds.to(device)
                for code, name in data.kind_names.items():
                    groups[name] = kinds == code
            for name, m in groups.items():
                k_sum[name] = k_sum.get(name, 0.0) + out.k[m].float().sum().item()
                k_cnt[name] = k_cnt.get(name, 0.0) + m.sum().item()
            if detailed:
                s, k = _per_target(logits, targets, out.k)
                surprisals.append(s.cpu())
                target_ks.append(k.cpu())
                all_ks.append(out.k.flatten().cpu())
    model.train(was_training)
    if shard is not None:
        loss_sum, correct, count = _reduce_sums(data, model, loss_sum, correct, count, k_sum, k_cnt, kind_hits)
    result = {"val_loss": loss_sum / max(count, 1)}
    if data.has_accuracy:
        result["val_accuracy"] = correct / max(count, 1)
    else:
        result["val_perplexity"] = math.exp(min(result["val_loss"], 700.0))
        n_bytes = data.val_bytes()
        if n_bytes:
            result["val_bpb"] = loss_sum / math.log(2) / n_bytes  # nats summed over targets -> bits per byte
    for name in k_sum:
        if k_cnt[name] == 0:  # a kind absent from this validation set (e.g. hop counts it does not ask)
            continue
        key = "val_k_mean" if name == "all" else f"val_k_mean_{name}"
        result[key] = k_sum[name] / k_cnt[name]
    by_kind = {}
    for name, (positions, scored, hits) in kind_hits.items():
        if positions == 0:
            continue
        by_kind[name] = {"accuracy": hits / scored if scored else None,
                         "k_mean": k_sum[name] / k_cnt[name] if k_cnt.get(name) else None, "n": int(positions)}
        if data.has_accuracy and scored:
            result[f"val_accuracy_{name}"] = hits / scored
    if detailed and all_ks:
        ks = torch.cat(all_ks)
        values, counts = ks.unique(return_counts=True)
        result["k_histogram"] = {int(v): int(c) for v, c in zip(values, counts)}
        result["k_by_surprisal_quantile"] = surprisal_quantiles(torch.cat(surprisals), torch.cat(target_ks))
    if detailed and by_kind:
        result["by_kind"] = by_kind
    return result
