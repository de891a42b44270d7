"""The trainer: one loop for every registered model, under the CWS training contract.

The K-loop contract itself (K-1 frozen steps, ``live_steps`` live) lives in the model; the trainer
adds the optimizer and schedule, autocast and clipping, metrics.jsonl, atomic checkpoints with
resume, a wall-clock budget, and DDP (rank 0 logs and saves). It runs unchanged under torchrun.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from . import checkpoint as ckpt
from .errors import ConfigError, Interrupted, TrainingError
from .diagnostics import collect as collect_diagnostics
from .evaluate import evaluate
from .model import build_model
from .optim import MuonAdamW
from .recipe import dump_recipe
from .registry import Registry, get_registry
from .schema import OptimizerConfig, Recipe, TrainConfig


# -- pieces --------------------------------------------------------------------------------------
def build_data(recipe: Recipe, registry: Registry):
    cls = registry.get("data_sources", recipe.data.type, where="data.type")
    return cls(recipe.data, recipe.seed, recipe.train.batch_size)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return make_optimizer(model, cfg.optimizer)


def make_optimizer(model: torch.nn.Module, opt: OptimizerConfig) -> torch.optim.Optimizer:
    """Any torch.optim optimizer by name. Weight decay applies to matrices only (not norms, biases).
    ``muon`` is Muon on the hidden matrices with AdamW on the rest."""
    name = {n.lower(): n for n in dir(torch.optim)}[opt.type.lower()]
    if name == "Muon":  # Muon takes 2-D hidden matrices only; AdamW gets the rest (parallax/optim.py)
        extra = dict(opt.model_extra or {})
        adamw = extra.pop("adamw", None) or {}
        return MuonAdamW(model, opt.lr, opt.weight_decay, extra, adamw)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return getattr(torch.optim, name)([g for g in groups if g["params"]], lr=opt.lr, **(opt.model_extra or {}))


def lr_lambda(cfg: TrainConfig):
    warm, floor, total = cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio, cfg.max_steps

    def f(step: int) -> float:  # step counts completed optimizer steps
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no CUDA device is available; use train.device=cpu")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp32":
        return None
    if cfg.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float16


def resolve_resume(cfg: TrainConfig, out_dir: Path) -> Path | None:
    r = cfg.resume
    if r is False or r == "false":
        if ckpt.list_checkpoints(out_dir):
            raise ConfigError(
                f"train.resume: {out_dir} already holds checkpoints; pass train.resume=auto to continue, "
                f"or choose a new out_dir=..."
            )
        return None
    if r == "auto":
        return ckpt.latest(out_dir)
    if r is True or r == "true":
        found = ckpt.latest(out_dir)
        if found is None:
            raise ConfigError(f"train.resume: true, but {out_dir} holds no checkpoint; use train.resume=auto")
        return found
    path = Path(str(r))
    if not path.is_dir():
        raise ConfigError(f"train.resume: checkpoint directory {path} does not exist")
    newest = ckpt.newest_inside(path)
    if newest is not None:
        raise ConfigError(f"train.resume: {path} is a run directory, not a checkpoint; name one of its step "
                          f"folders ({newest}), or set out_dir={path} train.resume=auto")
    return path


# -- the trainer ---------------------------------------------------------------------------------
class Trainer:
    def __init__(self, recipe: Recipe, registry: Registry | None = None, console: Console | None = None):
        self.recipe = recipe
        self.registry = registry or get_registry()
        self.cfg = recipe.train
        self.out_dir = Path(recipe.out_dir)
        self.console = console or Console(stderr=True)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = self.rank == 0

    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg)
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend)
        if self.device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        self.amp = autocast_dtype(cfg, self.device)
        _seed_all(self.recipe.seed)  # identical initial weights on every rank
        if self.is_main:
            ckpt.clean_stale(self.out_dir)  # temporary folders of dead processes' saves
        self.resume_from = resolve_resume(cfg, self.out_dir)
        self.data = build_data(self.recipe, self.registry)
        if self.resume_from is not None:
            self.data.restore(self.resume_from)  # the tokenizer the weights were trained with
        self.model = build_model(self.recipe.model, self.data.info, self.registry).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.scaler = torch.amp.GradScaler(enabled=self.amp == torch.float16)
        self.step = 0
        if self.resume_from is not None:
            self._load(self.resume_from)
        self.net = self.model
        if self.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=False)
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.config_yaml = f"# resolved recipe, written by parallax\n{dump_recipe(self.recipe)}"
        self.metadata = {
            "components": json.dumps(ckpt.components_used(self.recipe._components, self.registry)),
            "plugins": json.dumps({p.name: p.version for p in self.registry.plugins.values() if not p.error}),
        }

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext()

    # -- checkpoints ----------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        ckpt.check_plugins(path, self.registry)
        ckpt.load_model_state(path, self.model)
        state = ckpt.load_trainer_state(path)
        # the recipe's optimizer options, taken before the saved state replaces the groups
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        saved_type = state.get("optimizer_type")
        if saved_type is not None:
            same_type = saved_type.lower() == self.cfg.optimizer.type.lower()
        else:  # written before the type was saved: another type has other option names (a newer torch adds some)
            same_type = _compatible_groups(_group_keys(state.get("optimizer")), _group_keys(self.optimizer.state_dict()))
        try:
            if same_type:
                self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.step = int(state["step"])
            torch.set_rng_state(state["rng"]["torch"])
            random.setstate(state["rng"]["python"])
            np.random.set_state(state["rng"]["numpy"])
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise ConfigError(f"train.resume: {path} does not match this recipe's optimizer ({e}); resume with its own recipe") from None
        notes = self._apply_recipe_options(fresh)
        if not same_type:
            notes.insert(0, f"the checkpoint's optimizer is {saved_type or 'another type'}, the recipe's "
                            f"{self.cfg.optimizer.type}: its state starts fresh")
        if self.is_main:
            self.console.print(f"resumed from {path} at step {self.step}")
            for note in notes:
                self.console.print(f"note: {note}")

    def _apply_recipe_options(self, fresh: list[dict]) -> list[str]:
        """After a resume, the recipe's optimizer options and schedule apply, not the checkpoint's.

        Loading a state dict restores each group's options (lr, betas, weight decay...) and the
        scheduler's base learning rates as they were saved; a resume with train.optimizer.lr=...
        would otherwise keep the old ones. Returns one note per option that changed.
        """
        groups = self.optimizer.param_groups
        changed: dict[str, tuple] = {}  # option -> (the recipe's value, the checkpoint's), first group that differs
        for g, f in zip(groups, fresh):
            side = "adamw." if f.get("optimizer") == "adamw" and self.cfg.optimizer.type.lower() == "muon" else ""
            for k, v in f.items():
                name = side + ("lr" if k == "initial_lr" else k)
                if k != "lr" and k in g and g[k] != v and name not in changed:
                    changed[name] = (v, g[k])
        for g, f in zip(groups, fresh):
            g.update(f)
        self.scheduler.base_lrs = [g["initial_lr"] for g in groups]
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for g, base in zip(groups, self.scheduler.base_lrs):
            g["lr"] = base * factor
        self.scheduler._last_lr = [g["lr"] for g in groups]
        return [f"train.optimizer.{k}: the recipe's {new} replaces the checkpoint's {old}"
                for k, (new, old) in sorted(changed.items())]

    def save(self) -> Path | None:
        if not self.is_main:
            return None
        state = {
            "step": self.step,
            "optimizer_type": self.cfg.optimizer.type,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        }
        return ckpt.save(self.out_dir, self.step, self.model, state, self.config_yaml, self.metadata,
                         self.cfg.keep_last_n, self.data.files())

    # -- metrics --------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        if self.is_main:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _trim_metrics(self) -> None:
        """After a resume, drop records logged past the checkpoint by the interrupted run."""
        path = self.out_dir / "metrics.jsonl"
        if self.is_main and path.exists():
            keep, torn = [], 0
            for ln in path.read_text(errors="replace").splitlines():
                rec = _record(ln)
                if rec is None:
                    torn += ln.strip() != ""
                elif rec.get("step", 0) <= self.step:
                    keep.append(ln)
            path.write_text("".join(ln + "\n" for ln in keep))
            if torn:
                self.console.print(f"note: dropped {torn} unreadable line{'s' * (torn > 1)} from {path} "
                                   f"(a run stopped while writing it)")

    # -- the loop -------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        inputs, targets = batch["inputs"].to(self.device), batch["targets"].to(self.device)
        with self.autocast():
            out = self.net(inputs)
            loss = F.cross_entropy(out.logits.float().flatten(0, -2), targets.flatten(), ignore_index=-100)
        if not _all_finite(loss, self.distributed):
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
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach(), (out.k.float().mean().detach() if out.k is not None else None)

    def fit(self) -> dict:
        self._setup()
        cfg = self.cfg
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(self.config_yaml)
            for name, content in self.data.files().items():
                (self.out_dir / name).write_bytes(content)
            self._trim_metrics()
            self.console.print(self._header())
        start_time = time.time()
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        tokens_per_step = self.recipe.train.batch_size * self.world * _tokens_per_example(self.data)
        progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=self.console,
            disable=not (cfg.progress and self.is_main and self.console.is_terminal),
        )
        last_eval: dict = {}
        window_loss, window_k, window_n, window_t = 0.0, 0.0, 0, time.time()
        stop_reason = "max_steps"
        try:
            with progress:
                task = progress.add_task("train", total=cfg.max_steps, completed=self.step, info="")
                while self.step < cfg.max_steps:
                    loss, k_mean = self.train_step(self.data.batch(self.step + 1, self.rank))
                    self.step += 1
                    window_loss += loss.item()
                    window_k += k_mean.item() if k_mean is not None else float("nan")
                    window_n += 1
                    if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                        elapsed = time.time() - window_t
                        rec = {
                            "step": self.step,
                            "loss": window_loss / window_n,
                            "tokens_per_s": tokens_per_step * window_n / max(elapsed, 1e-9),
                            "k_mean": window_k / window_n if k_mean is not None else None,
                            "lr": self.scheduler.get_last_lr()[0],
                            **collect_diagnostics(self.model),
                        }
                        self._log(rec)
                        progress.update(task, completed=self.step, info=_fmt(rec))
                        window_loss, window_k, window_n, window_t = 0.0, 0.0, 0, time.time()
                    else:
                        progress.update(task, completed=self.step)
                    out_of_time = budget is not None and _any_rank(time.time() - start_time > budget, self.distributed)
                    if self.step % cfg.eval_every == 0 and not out_of_time:
                        last_eval = self._eval()
                    if self.step % cfg.save_every == 0:
                        self.save()
                    if out_of_time:
                        stop_reason = "max_minutes"
                        break
            if not ckpt.step_dir(self.out_dir, self.step).exists():
                self.save()  # before the final evaluation, so an interrupt there loses nothing
            if not last_eval or last_eval.get("step") != self.step:
                last_eval = self._eval()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (``parallax run`` turns it into this)
            if not self.is_main:
                raise Interrupted(f"rank {self.rank} interrupted at step {self.step}; rank 0 saves the run") from None
            done = ckpt.step_dir(self.out_dir, self.step)
            with _signals_held():  # a second Ctrl-C, or torchrun's SIGTERM to the survivors, must not cut the save short
                saved = done if done.exists() else self.save() if self.step > 0 else None
            raise Interrupted(f"interrupted at step {self.step}; saved {saved}; continue with train.resume=auto") from None
        summary = {
            "step": self.step, "stop": stop_reason, "train_seconds": round(time.time() - start_time, 1),
            "world_size": self.world, **{k: v for k, v in last_eval.items() if k != "step"},
        }
        if self.is_main:
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.distributed:
            dist.barrier()
        return summary

    def _eval(self) -> dict:
        result = evaluate(self.model, self.data, self.device, self.autocast if self.amp else None)
        result = {"step": self.step, **result, **collect_diagnostics(self.model)}
        self._log(result)
        if self.is_main:
            self.console.print("eval " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
        return result

    def _header(self) -> str:
        used = json.loads(self.metadata["components"])
        plugins = sorted({v for v in used.values()})
        n = sum(p.numel() for p in self.model.parameters())
        return (f"parallax run: {n:,} parameters on {self.device} (world {self.world}); "
                f"plugins: {', '.join(plugins)}; out_dir {self.out_dir}")


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _tokens_per_example(data) -> int:
    return int(data.batch(0)["inputs"][0].numel()) if hasattr(data, "batch") else 1


def _group_keys(state: dict | None) -> list[set] | dict | None:
    """The option names of each param group of an optimizer state dict; Muon + AdamW: ``{half: ...}``."""
    if not isinstance(state, dict):
        return None
    if "param_groups" in state:
        return [set(g) - {"params"} for g in state["param_groups"]]
    return {half: _group_keys(v) for half, v in state.items()}


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


def _compatible_groups(saved, fresh) -> bool:
    """Whether each saved group's options are a subset or a superset of the fresh group's (a newer
    torch adds options; another optimizer type has other ones)."""
    if isinstance(saved, dict) or isinstance(fresh, dict):  # Muon + AdamW: each half alike
        return (isinstance(saved, dict) and isinstance(fresh, dict) and saved.keys() == fresh.keys()
                and all(_compatible_groups(saved[h], fresh[h]) for h in saved))
    if saved is None or fresh is None:
        return saved is fresh
    return len(saved) == len(fresh) and all(a <= b or b <= a for a, b in zip(saved, fresh))


def _record(line: str) -> dict | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def _all_finite(loss: torch.Tensor, distributed: bool) -> bool:
    ok = torch.isfinite(loss.detach()).float()
    if distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def _any_rank(flag: bool, distributed: bool) -> bool:
    if not distributed:
        return flag
    t = torch.tensor(float(flag))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _fmt(rec: dict) -> str:
    k = f"  K {rec['k_mean']:.2f}" if rec.get("k_mean") is not None else ""
    return f"loss {rec['loss']:.4f}  {rec['tokens_per_s']:.0f} tok/s{k}"
