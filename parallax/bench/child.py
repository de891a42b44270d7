"""One training run of a benchmark, in a process of its own, and what it reports.

``train_in_child(recipe, overrides, run_dir, err)`` starts ``python -m parallax.bench.child SPEC``,
which trains the recipe through the same ``Trainer`` that ``parallax run`` uses and writes one JSON
row (parameters, tokens/s, the final validation figures, memory, the bytes autograd saves for one
step) beside the run. A fresh process per run keeps one run's allocator state and warm caches out of
the next; ``bench compare``, ``bench seeds`` and ``bench sweep`` all train this way.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import TrainingError
from ..metrics import read_records

RESULT_FILE = "compare.json"


def count_params(model: torch.nn.Module) -> dict:
    """``{"params", "embedding", "non_embedding"}``; shared tensors (a tied head) are counted once."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    total = emb = 0
    for p in model.parameters():  # parameters() yields each shared tensor once
        total += p.numel()
        emb += p.numel() if id(p) in tables else 0
    return {"params": total, "embedding": emb, "non_embedding": total - emb}


def _rss() -> tuple[int | None, int | None]:
    """(current, peak) resident set of this process in bytes, from /proc (Linux); None elsewhere."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None, None


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):  # "5" resets the peak resident set (VmHWM) to the current one (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")


def saved_bytes(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, autocast) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one training step."""
    from .memory import saved_for_backward

    model.train()
    kw = {"k_max": model.k_max} if model.has_k_loop else {}  # the full K budget
    with saved_for_backward() as seen, autocast():
        out = model(inputs, **kw)
        loss = F.cross_entropy(out.logits.float().flatten(0, -2), targets.flatten(), ignore_index=-100)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def tokens_per_s(metrics: Path) -> tuple[float | None, float | None]:
    """Training tokens/s from metrics.jsonl: (over the whole run, median of the logged windows).

    Each training record holds the tokens/s of the window since the previous one, so a window of n
    steps took n / tokens_per_s of per-step time, and the run's rate is total steps over total time
    (the tokens per step cancel out). The median window is the rate with the machine's stalls
    (another job taking the cores for a while) left out."""
    steps = seconds_per_token_step = 0.0
    prev, windows = 0, []
    for rec in read_records(metrics):
        if "loss" in rec and rec.get("tokens_per_s"):
            n = rec["step"] - prev
            prev = rec["step"]
            steps += n
            seconds_per_token_step += n / rec["tokens_per_s"]
            windows.append(rec["tokens_per_s"])
    if not windows:
        return None, None
    return steps / seconds_per_token_step, statistics.median(windows)


def train_one(recipe_ref: str, overrides: list[str], result: Path) -> dict:
    """Train one recipe (in this process) and write its row of the comparison to ``result``."""
    from rich.console import Console

    from ..callbacks import Callback
    from ..recipe import load_recipe
    from ..trainer import Trainer

    rss0 = [None]

    class MarkMemory(Callback):
        def on_setup(self, trainer) -> None:  # memory is measured from here: data and model are built
            if trainer.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(trainer.device)
            _reset_peak_rss()
            rss0[0] = _rss()[0]

    recipe = load_recipe(recipe_ref, overrides)
    if "jsonl" not in [spec.type for spec in recipe.train.loggers]:  # tokens/s is read back from metrics.jsonl
        loggers = [spec.model_dump() for spec in recipe.train.loggers] + [{"type": "jsonl"}]
        recipe = load_recipe(recipe_ref, [*overrides, f"train.loggers={json.dumps(loggers)}"])
    trainer = Trainer(recipe, console=Console(stderr=True, soft_wrap=True), callbacks=[MarkMemory()])
    t0 = time.perf_counter()
    summary = trainer.fit()
    wall = time.perf_counter() - t0
    if trainer.device.type == "cuda":
        memory, peak = "cuda_peak_allocated", torch.cuda.max_memory_allocated(trainer.device)
    else:
        _, hwm = _rss()
        memory, peak = "cpu_peak_rss_growth", (hwm - rss0[0]) if hwm is not None and rss0[0] is not None else None
    batch = trainer.data.batch(1)
    saved = saved_bytes(trainer.model, batch["inputs"].to(trainer.device), batch["targets"].to(trainer.device),
                        trainer.autocast)
    row = {
        **count_params(trainer.model),
        "steps": summary["step"], "stop": summary["stop"], "train_seconds": summary["train_seconds"],
        "wall_seconds": round(wall, 1),
        **dict(zip(("tokens_per_s", "tokens_per_s_median"), tokens_per_s(trainer.out_dir / "metrics.jsonl"))),
        **{k: summary[k] for k in ("val_loss", "val_accuracy", "val_perplexity", "val_bpb", "val_k_mean")
           if k in summary},
        "compiled": trainer.compiled, "compile_seconds": summary.get("compile_seconds"),
        "memory": memory, "peak_bytes": peak, "saved_bytes": saved, "device": str(trainer.device),
    }
    result.write_text(json.dumps(row))
    return row


def train_in_child(recipe_ref: str, overrides: list[str], run_dir: Path, err) -> dict:
    result = run_dir / RESULT_FILE
    spec = json.dumps({"recipe": recipe_ref, "overrides": overrides, "result": str(result)})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "parallax.bench.child", spec], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    last = ""
    for line in proc.stderr:  # the run's log, passed through as it comes
        last = line.strip() or last
        err.print(f"[dim]{run_dir.name}[/] {line.rstrip()}", highlight=False)
    if proc.wait() != 0 or not result.is_file():
        reason = last.removeprefix("parallax: error: ") if last else f"exit status {proc.returncode}"
        raise TrainingError(f"{recipe_ref}: training failed: {reason}")
    return json.loads(result.read_text())


def budget_overrides(steps: int | None, minutes: float | None) -> list[str]:
    """The budget as overrides. With --minutes the recipe's max_steps stays: it sets the LR schedule,
    and a run that reaches it first stops there (the table marks it; raise it with train.max_steps=N)."""
    if steps is not None:
        return [f"train.max_steps={steps}", "train.max_minutes=null"]
    if minutes is not None:
        return [f"train.max_minutes={minutes}"]
    return []


if __name__ == "__main__":  # the child process of one benchmark run
    spec = json.loads(sys.argv[1])
    try:
        train_one(spec["recipe"], spec["overrides"], Path(spec["result"]))
    except Exception as e:  # noqa: BLE001 - the parent reports the last line
        import traceback

        from ..errors import ParallaxError

        if not isinstance(e, ParallaxError):  # a bug, not bad input: keep the traceback in the log
            traceback.print_exc()
        sys.stderr.write(f"parallax: error: {' '.join(str(e).split()) or type(e).__name__}\n")
        sys.exit(2)
