"""The trainer: one training loop, and its state, for every registered model.

The K-loop contract itself (K-1 frozen steps, ``live_steps`` live) lives in the model; the trainer
runs the loop around it: a step of autocast, backward, clipping and the optimizer; logging through
``train.loggers`` (metrics.jsonl by default); evaluation; checkpoints with resume; a wall-clock
budget; DDP or FSDP2 (``parallel``; rank 0 logs and saves). It runs unchanged under torchrun.
What it is built from lives elsewhere: the optimizer and schedule in ``optim``, data, device and
precision in ``build``, resume and state restoring in ``resume``, checkpoint files in
``checkpoint``, the loggers in ``loggers``, the DDP and FSDP wrapping in ``parallel``.
Benchmarks and loggers watch it through ``callbacks``.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console

from . import checkpoint as ckpt
from .budget import check_fits, meta_model
from .build import autocast_dtype, build_data, resolve_device, seed_all, tokens_per_example
from .callbacks import Callback
from .compiling import compile_model, graphs_compiled, wanted
from .diagnostics import collect as collect_diagnostics
from .distributed import all_finite, any_rank, mean_over_ranks
from .ema import EMA
from .errors import Interrupted, TrainingError
from .evaluate import evaluate
from .loggers import build_loggers
from .model import build_model
from .optim import make_optimizer, make_scheduler
from .parallel import full_model_state, full_optimizer_state, load_full_optimizer_state, local_value, wrap
from .progress import TrainingProgress
from .recipe import dump_recipe
from .registry import Registry, get_registry
from .resume import resolve_resume, restore_state, trainer_state
from .rundir import RunLock, check_resume_target
from .schema import Recipe


class Trainer:
    def __init__(self, recipe: Recipe, registry: Registry | None = None, console: Console | None = None,
                 callbacks: list[Callback] | None = None):
        self.recipe = recipe
        self.registry = registry or get_registry()
        self.cfg = recipe.train
        self.out_dir = Path(recipe.out_dir)
        self.console = console or Console(stderr=True)
        self.ema = EMA(recipe.train.ema) if recipe.train.ema else None  # evaluates and saves the weight average
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = self.rank == 0
        self.lock: RunLock | None = None
        # the loggers of train.loggers (rank 0 writes the logs) come first: a callback reading
        # metrics.jsonl in on_log finds the record there
        loggers = build_loggers(self.cfg.loggers, self.registry) if self.is_main else []
        self.callbacks = [*loggers, *([self.ema] if self.ema else []), *(callbacks or [])]

    def _emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def setup(self) -> None:
        """Build the device, data, model, optimizer and schedule, and restore a resumed run's state."""
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg)
        if self.device.type == "cuda":  # before the process group, so NCCL binds each rank to its own GPU
            local = int(os.environ.get("LOCAL_RANK", "0"))
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend)
        self.amp = autocast_dtype(cfg, self.device)
        seed_all(self.recipe.seed)  # identical initial weights on every rank
        if self.is_main and self.lock is None:  # one run per out_dir, before anything there is read or written
            self.lock = RunLock(self.out_dir).acquire()
            if self.lock.note:
                self.console.print(f"note: {self.lock.note}")
            ckpt.clean_stale(self.out_dir)  # temporary folders of dead processes' saves
        self.resume_from = resolve_resume(cfg, self.out_dir)
        if self.resume_from is not None and cfg.resume not in (True, "true", "auto"):
            check_resume_target(self.out_dir, self.resume_from)
        self.data = build_data(self.recipe, self.registry)
        if self.resume_from is not None:
            self.data.restore(self.resume_from)  # the tokenizer the weights were trained with
        # bounds before allocation: a recipe that cannot fit is refused before its tensors exist
        self.positions = tokens_per_example(self.data)  # input positions per example
        check_fits(self.recipe, meta_model(self.recipe, self.data.info, self.registry), self.positions, self.device)
        self.model = build_model(self.recipe.model, self.data.info, self.registry).to(self.device)
        if self.resume_from is not None:  # the full weights, before FSDP shards them
            ckpt.check_plugins(self.resume_from, self.registry)
            ckpt.load_model_state(self.resume_from, self.model)
        self.net = self.model
        if self.distributed:  # FSDP shards the parameters in place: the optimizer is built on the shards
            self.net = wrap(self.model, cfg.distributed)
        self.optimizer = make_optimizer(self.model, cfg.optimizer)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler(enabled=self.amp == torch.float16)
        self.step = 0
        if self.resume_from is not None:
            self._load_state(self.resume_from)
        self.compiled = wanted(cfg.compile, self.model, self.device, cfg.max_steps)
        if self.compiled:
            self.net = compile_model(self.model, self.net)
        self.config_yaml = f"# resolved recipe, written by parallax\n{dump_recipe(self.recipe)}"
        self.metadata = {
            "components": json.dumps(ckpt.components_used(self.recipe._components, self.registry)),
            "plugins": json.dumps({p.name: p.version for p in self.registry.plugins.values() if not p.error}),
        }
        self._emit("on_setup")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext()

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return self.distributed and self.cfg.distributed == "fsdp"

    def _load_state(self, path: Path) -> None:
        """The trainer state of a checkpoint whose weights are already in the model."""
        load = partial(load_full_optimizer_state, self.model, self.optimizer) if self.sharded else None
        self.step, notes = restore_state(path, self.cfg.optimizer, self.optimizer, self.scheduler, self.scaler, load)
        if self.is_main:
            self.console.print(f"resumed from {path} at step {self.step}")
            for note in notes:
                self.console.print(f"note: {note}")

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0). Under FSDP every rank calls it: gathering the full state is a collective."""
        weights, optimizer_state = self.model, None
        if self.sharded:
            weights = full_model_state(self.model)
            optimizer_state = full_optimizer_state(self.model, self.optimizer)
        if not self.is_main:
            return None
        state = trainer_state(self.step, self.cfg.optimizer, self.optimizer, self.scheduler, self.scaler,
                              optimizer_state)
        path = ckpt.save(self.out_dir, self.step, weights, state, self.config_yaml, self.metadata,
                         self.cfg.keep_last_n, self.data.files())
        self._emit("on_save", path)
        return path

    # -- the loop -------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step on ``batch``; returns (loss, mean K of the batch or None) as 0-d tensors."""
        inputs, targets = batch["inputs"].to(self.device), batch["targets"].to(self.device)
        with self.autocast():
            # the targets, for a model whose learned halting rule labels its head from them
            extra = {"targets": targets} if getattr(self.model, "takes_targets", False) else {}
            out = self.net(inputs, **extra)
            loss = F.cross_entropy(out.logits.float().flatten(0, -2), targets.flatten(), ignore_index=-100)
        if not all_finite(loss):
            # Nothing is saved: weights that give a non-finite loss, finite or not, are not a state
            # to resume from (resuming them would meet the same batch again). The newest checkpoint
            # predates them, and a resume applies the recipe's new optimizer options.
            saved = ckpt.latest(self.out_dir)
            fix = "lower train.optimizer.lr or set train.grad_clip"
            if saved is None:
                raise TrainingError(f"loss became {loss.item()} at step {self.step + 1}, before any checkpoint; "
                                    f"{fix} and start again")
            raise TrainingError(f"loss became {loss.item()} at step {self.step + 1}; nothing was saved; the newest "
                                f"checkpoint is {saved}; {fix}, then resume from it with train.resume=auto")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss + out.stats.get("aux_loss", 0)).backward()  # aux_loss: e.g. a learned halting head
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            # the global norm before clipping; the training record logs the last step's of its window
            self.grad_norm = local_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach(), (out.k.float().mean().detach() if self.model.has_k_loop else None)

    def _start_run_dir(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.yaml").write_text(self.config_yaml)
        for name, content in self.data.files().items():
            (self.out_dir / name).write_bytes(content)
        self.console.print(self._header())

    def fit(self) -> dict:
        """Train to ``max_steps`` or ``max_minutes``, evaluate and save; returns the run's summary."""
        try:
            return self._fit()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _fit(self) -> dict:
        self.setup()
        cfg = self.cfg
        if self.is_main:
            self._start_run_dir()
        start_time = time.time()
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        tokens_per_step = self.recipe.train.batch_size * self.world * self.positions
        last_eval: dict = {}
        window_loss, window_k, window_n, window_t = 0.0, 0.0, 0, time.time()
        window_timed, window_compile, compile_seconds = 0, 0.0, 0.0  # steps that did not compile; their time
        graphs = graphs_compiled() if self.compiled else 0
        stop_reason = "max_steps"
        try:
            with TrainingProgress(self.console, cfg.max_steps, self.step, cfg.progress and self.is_main) as bar:
                while self.step < cfg.max_steps:
                    step_start = time.time()
                    loss, k_mean = self.train_step(self.data.batch(self.step + 1, self.rank))
                    self.step += 1
                    value = loss.item()
                    now = graphs_compiled() if self.compiled else graphs
                    if now != graphs:  # this step compiled: not training time
                        graphs = now
                        window_compile += time.time() - step_start
                    else:
                        window_timed += 1
                    window_loss += value
                    window_k += k_mean.item() if k_mean is not None else float("nan")
                    window_n += 1
                    self._emit("on_step", value)
                    if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                        elapsed = time.time() - window_t - window_compile
                        rec = {
                            "step": self.step,
                            "loss": mean_over_ranks(window_loss / window_n),  # the global batch's
                            # over the steps that did not compile (None when all did)
                            "tokens_per_s": tokens_per_step * window_timed / max(elapsed, 1e-9) if window_timed
                            else None,
                            **({"compile_seconds": round(window_compile, 2)} if window_compile else {}),
                            "k_mean": window_k / window_n if k_mean is not None else None,
                            "lr": self.scheduler.get_last_lr()[0],
                            **({"grad_norm": self.grad_norm.item()} if cfg.grad_clip else {}),
                            **collect_diagnostics(self.model),
                        }
                        self._emit("on_log", rec)
                        bar.update(self.step, rec)
                        window_loss, window_k, window_n, window_t = 0.0, 0.0, 0, time.time()
                        compile_seconds += window_compile
                        window_timed, window_compile = 0, 0.0
                    else:
                        bar.update(self.step)
                    out_of_time = budget is not None and any_rank(time.time() - start_time > budget)
                    paused = time.time()  # evaluation and saving are not training time: tokens/s leaves them out
                    if self.step % cfg.eval_every == 0 and not out_of_time:
                        last_eval = self._eval()
                    if self.step % cfg.save_every == 0:
                        self.save()  # every rank: under FSDP the full state is gathered from all
                    window_t += time.time() - paused
                    if self.compiled:  # an evaluation's own graphs are not the next step's compile time
                        graphs = graphs_compiled()
                    if out_of_time:
                        stop_reason = "max_minutes"
                        break
            if any_rank(not ckpt.step_dir(self.out_dir, self.step).exists()):  # one answer for every rank
                self.save()  # before the final evaluation, so an interrupt there loses nothing
            if not last_eval or last_eval.get("step") != self.step:
                last_eval = self._eval()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (``parallax run`` turns it into this)
            if not self.is_main:
                raise Interrupted(f"rank {self.rank} interrupted at step {self.step}; rank 0 saves the run") from None
            done = ckpt.step_dir(self.out_dir, self.step)
            if self.sharded and not done.exists():
                # gathering FSDP's shards needs every rank, and the others are stopping: the newest
                # periodic checkpoint is what there is
                raise Interrupted(f"interrupted at step {self.step}; under train.distributed=fsdp an interrupt "
                                  f"does not save; the newest checkpoint is {ckpt.latest(self.out_dir)}; "
                                  "continue with train.resume=auto") from None
            # a second Ctrl-C, or torchrun's SIGTERM to the survivors, must not cut the save short
            with _signals_held():
                saved = done if done.exists() else self.save() if self.step > 0 else None
            raise Interrupted(f"interrupted at step {self.step}; saved {saved}; "
                              "continue with train.resume=auto") from None
        summary = {
            "step": self.step, "stop": stop_reason, "train_seconds": round(time.time() - start_time, 1),
            "world_size": self.world, **({"compile_seconds": round(compile_seconds + window_compile, 1)}
                                         if self.compiled else {}),
            **{k: v for k, v in last_eval.items() if k != "step"},
        }
        if self.is_main:
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self._emit("on_end", summary)
        if self.distributed:
            dist.barrier()
        return summary

    def _eval(self) -> dict:
        with self.ema.swapped(self.model) if self.ema else nullcontext():
            # each rank evaluates its share of the validation batches; the sums are all-reduced
            shard = (self.rank, self.world) if self.distributed else None
            result = evaluate(self.model, self.data, self.device, self.autocast if self.amp else None, shard=shard)
        result = {"step": self.step, **result, **collect_diagnostics(self.model)}
        self._emit("on_eval", result)
        if self.is_main:
            self.console.print("eval " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in result.items()))
        return result

    def _header(self) -> str:
        used = json.loads(self.metadata["components"])
        plugins = sorted(set(used.values()))
        n = sum(p.numel() for p in self.model.parameters())
        return (f"parallax run: {n:,} parameters on {self.device} (world {self.world}); "
                f"plugins: {', '.join(plugins)}; out_dir {self.out_dir}")


@contextmanager
def _signals_held():
    """Ignore SIGINT and SIGTERM inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
