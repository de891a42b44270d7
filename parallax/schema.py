"""Typed recipe schema (pydantic): the fixed top-level keys, and ``Spec``, the base of every plugin's options.

A component in a recipe is a mapping with ``type: <registry name>`` plus that plugin's options.
Fields that hold components are annotated ``Component("experts")`` (or a list of them); the
validator in ``parallax.recipe`` replaces each one with the plugin's own validated ``Config``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

MAX_THREADS = 1024  # torch.set_num_threads crashes the process far above any real core count
MAX_K = 4096  # K steps per position: far past any settling the seeds report (k_max 48); a bound, not a goal


class Spec(BaseModel):
    """Base of every component's options: subclasses declare fields; an unknown key is an error."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(description="registry name of the component")


class Unresolved(Spec):
    """A component before validation has picked its plugin: any keys, which the plugin's ``Config`` then checks."""

    model_config = ConfigDict(extra="allow")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Kind:
    """Marks a field as holding a component of one registry kind (``experts``, ``encoders``...)."""

    kind: str


def _unresolved(value):
    """A mapping becomes an ``Unresolved`` component; a plugin's ``Config`` instance stays as it is."""
    return Unresolved.model_validate(value) if isinstance(value, dict) else value


def Component(kind: str):  # noqa: N802 - reads like a type in field annotations
    return Annotated[Spec, Kind(kind), BeforeValidator(_unresolved)]


def _named(value):
    """A component given by its name alone (``jsonl``) is ``{type: jsonl}``."""
    return Unresolved(type=value) if isinstance(value, str) else _unresolved(value)


def _listed(value):
    """One component where a list is expected (``train.loggers=tensorboard``) is a list of one."""
    return [value] if isinstance(value, (str, dict)) else value


def Components(kind: str):  # noqa: N802
    """A list of components of ``kind``, each a mapping or just its registry name."""
    return Annotated[list[Annotated[Spec, Kind(kind), BeforeValidator(_named)]], BeforeValidator(_listed)]


def _compile_setting(value):
    """``train.compile``: false, true or auto; YAML's and the command line's spellings of them."""
    if isinstance(value, bool) or value == "auto":
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "auto"):
        return {"true": True, "false": False, "auto": "auto"}[value.lower()]
    raise ValueError("must be false, true or auto")


CompileSetting = Annotated[Literal["auto"] | bool, BeforeValidator(_compile_setting)]


class OptimizerConfig(Spec):
    """Any ``torch.optim`` optimizer by name; extra keys are passed to its constructor (checked against it)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("adamw", description="torch.optim class name, case-insensitive (adamw, sgd, muon...)")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (after warm-up)")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay (AdamW), L2 penalty (SGD...)")


class ScheduleConfig(Strict):
    warmup_steps: int = Field(50, ge=0, description="linear warm-up steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")


class TrainConfig(Strict):
    max_steps: int = Field(1000, gt=0, description="optimizer steps")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget; stops, evaluates and saves")
    eval_every: int = Field(200, gt=0, description="steps between validation passes")
    log_every: int = Field(10, gt=0, description="steps between training records (a plain line when not on a terminal)")
    save_every: int = Field(500, gt=0, description="steps between checkpoints")
    keep_last_n: int = Field(2, ge=1, description="checkpoints kept in out_dir")
    batch_size: int = Field(32, gt=0, description="per process")
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="torch.optim optimizer and its options")
    schedule: ScheduleConfig = Field(ScheduleConfig(), description="linear warm-up, then cosine decay")
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; null disables")
    ema: float | None = Field(None, gt=0, lt=1, description="decay of an EMA of the weights, used for evaluation "
                              "and saved with each checkpoint (e.g. 0.999); null disables")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; auto = bf16 on CUDA when supported, else fp32"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available, else cpu")
    max_memory_gb: float | None = Field(
        None, gt=0, description="refuse a recipe whose estimated training memory exceeds this many GB before "
        "building it; null: the memory of the device it trains on (RAM or the GPU's)")
    threads: int | None = Field(None, gt=0, le=MAX_THREADS, description="torch CPU threads; null keeps torch's default")
    resume: str | bool = Field(False, description="false | auto (latest in out_dir if any) | true (must exist) | PATH")
    progress: bool = Field(True, description="rich progress bar")
    compile: CompileSetting = Field(
        False, description="torch.compile: false | true | auto (on where measured to pay: a K-loop model training "
        "on the CPU for at least 500 steps; docs/benchmarks.md). A CWS compiles its K steps, other models whole")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: ddp keeps a replica of the weights on every rank; fsdp shards weights, "
        "gradients and optimizer state across the ranks (FSDP2); checkpoints hold the full state either way")
    loggers: Components("loggers") = Field(  # type: ignore[valid-type]
        default_factory=lambda: [Unresolved(type="jsonl")],
        description="where records go: a list of logger names (jsonl, tensorboard, csv) or {type: NAME, ...} mappings",
    )

    @model_validator(mode="after")
    def _fsdp_supports(self):
        if self.distributed == "fsdp":
            if self.ema is not None:  # the average would be a second sharded copy to gather at each save
                raise ValueError("ema is not supported with distributed: fsdp; use distributed: ddp or set ema: null")
            if self.optimizer.type.lower() == "muon":  # Newton-Schulz needs whole matrices, FSDP holds shards
                raise ValueError("optimizer muon is not supported with distributed: fsdp; "
                                 "use adamw or distributed: ddp")
        return self


class Recipe(Strict):
    """A whole recipe. ``model`` and ``data`` are components chosen by registry name."""

    seed: int = Field(0, description="seeds the weights, the data order and sampling")
    out_dir: str = Field("runs/default", min_length=1, description="run directory: metrics.jsonl and step-XXXXXXXX/")
    model: Component("models") = Field(  # type: ignore[valid-type]
        description="the model: type is a registered model, the rest its options")
    data: Component("data_sources") = Field(  # type: ignore[valid-type]
        description="the data: type is a registered data source, the rest its options")
    train: TrainConfig = Field(TrainConfig(), description="the training loop")
    #: (kind, registry name) of every component, filled in by validation
    _components: list[tuple[str, str]] = PrivateAttr(default_factory=list)
