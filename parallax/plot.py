"""Figures from a run: its curves, its K statistics and how its workspace settles, as PNG files.

Three sources feed them:

- ``metrics.jsonl`` (``read_records``): training records (``loss``, ``tokens_per_s``, ``k_mean``,
  ``lr``) and evaluation records (``val_loss``, ``val_accuracy`` or ``val_perplexity``,
  ``val_k_mean``...), plotted against the step and against time. A record's ``time`` is used when
  it has one; otherwise the elapsed training time is rebuilt from the ``tokens_per_s`` of each
  logging window (window seconds = steps in the window x tokens per step / tokens_per_s), which
  leaves out evaluation and saving, as tokens/s does.
- an evaluation of the checkpoint (``evaluate(..., detailed=True)``): the K histogram and mean K
  per surprisal quantile.
- the settling dynamics of ``parallax bench dynamics`` (its ``--json`` output, or measured here
  with ``model.trajectory``): the RMS movement of the state at each K step, the median ratio of
  one step's movement to the previous one and the share of steps that turn back.

A model without a K loop gets the curves and a note for each K figure it cannot have. matplotlib
is an optional dependency (the ``plot`` extra), imported only when a figure is made; figures are
drawn by its Agg backend without pyplot, so nothing global (a notebook's backend) changes.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

MISSING = 'needs matplotlib; pip install "parallax-cws[plot]"'
TRAJECTORY_SAMPLE = 48  # positions drawn as thin lines on the dynamics figure


class MissingMatplotlib(ImportError):
    """matplotlib is not installed; the message is ``MISSING``."""


def require_matplotlib():
    """matplotlib, or ``MissingMatplotlib`` with the line that says how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise MissingMatplotlib(MISSING) from None
    return matplotlib


def new_figure(figsize=(7, 4), rows: int = 1, sharex: bool = False):
    """A figure drawn by the Agg backend and its axes, made without pyplot: no global state, no display."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, 1, sharex=sharex)


def k_colormap():
    """The colormap of K everywhere (histogram bars, the report's K map): few steps dark, many bright."""
    return require_matplotlib().colormaps["viridis"]


# -- the run's records ------------------------------------------------------------------------------
def run_dir_of(path: str | Path) -> Path:
    """The run's out_dir, given it or one of its ``step-XXXXXXXX/`` checkpoints."""
    p = Path(path)
    if not (p / "metrics.jsonl").is_file() and (p / "model.safetensors").is_file():
        p = p.parent
    return p


def elapsed_seconds(train: list[dict], tokens_per_step: int) -> list[float]:
    """Training seconds at each training record, rebuilt from the logging windows' tokens/s."""
    out, total, prev = [], 0.0, 0
    for r in train:
        total += _window_seconds(r, prev, tokens_per_step)
        prev = r["step"]
        out.append(total)
    return out


def _window_seconds(record: dict, prev_step: int, tokens_per_step: int) -> float:
    rate = record.get("tokens_per_s") or 0.0
    return (record["step"] - prev_step) * tokens_per_step / rate if rate > 0 else 0.0


@dataclass
class Curves:
    """The records of a run split into training and evaluation, each with its elapsed seconds."""

    train: list[dict]
    evals: list[dict]
    train_time: list[float]
    eval_time: list[float]
    measured_time: bool  # ``time`` in the records (wall time) rather than rebuilt from tokens/s

    @classmethod
    def of(cls, records: list[dict], tokens_per_step: int) -> Curves:
        """``time`` (seconds since the run began, or a Unix time) when every record has it; else
        training seconds from tokens/s, an evaluation at step s placed at its training record's time."""
        train = [r for r in records if "loss" in r and "step" in r]
        evals = [r for r in records if "val_loss" in r and "step" in r]
        if train and all("time" in r for r in train + evals):
            first = float(train[0]["time"])
            t0 = first - _window_seconds(train[0], 0, tokens_per_step) if first >= 1e8 else 0.0  # a Unix time
            since = [float(r["time"]) - t0 for r in train + evals]
            return cls(train, evals, since[: len(train)], since[len(train):], True)
        train_time = elapsed_seconds(train, tokens_per_step)
        return cls(train, evals, train_time, [_at_step(r["step"], train, train_time) for r in evals], False)


def _at_step(step: int, train: list[dict], times: list[float]) -> float:
    """Elapsed seconds at ``step``, linear between training records."""
    import numpy as np

    if not train:
        return 0.0
    return float(np.interp(step, [0] + [r["step"] for r in train], [0.0] + times))


# -- the figures ------------------------------------------------------------------------------------
@dataclass
class Figures:
    """Named figures (file stem -> matplotlib Figure, in drawing order) and a note for each one left out."""

    figures: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def write(self, out_dir: str | Path, dpi: int = 120) -> list[Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, fig in self.figures.items():
            path = out / f"{name}.png"
            fig.savefig(path, dpi=dpi)
            paths.append(path)
        return paths

    def png_bytes(self, dpi: int = 110) -> dict[str, bytes]:
        out = {}
        for name, fig in self.figures.items():
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi)
            out[name] = buf.getvalue()
        return out


def _labelled(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, title, a light grid and the legend of a line figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()


def curve_figures(curves: Curves, into: Figures) -> None:
    """Loss, accuracy (where evaluated) and mean K against the step; loss and accuracy against time."""
    time_label = "elapsed time (s)" if curves.measured_time else "training time (s, from tokens/s; excludes evaluation)"
    if not curves.train and not curves.evals:
        into.notes.append("metrics.jsonl holds no training or evaluation records: no curves")
        return
    for axis, label, tx, ex in (("step", "step", [r["step"] for r in curves.train], [r["step"] for r in curves.evals]),
                                ("time", time_label, curves.train_time, curves.eval_time)):
        fig, ax = new_figure()
        if curves.train:
            ax.plot(tx, [r["loss"] for r in curves.train], label="training loss", lw=1.2)
        if curves.evals:
            ax.plot(ex, [r["val_loss"] for r in curves.evals], "o-", label="validation loss", lw=1.5)
        _labelled(ax, label, "cross-entropy (nats)", f"loss against {axis}")
        into.figures[f"loss_{axis}"] = fig
        acc = [r for r in curves.evals if r.get("val_accuracy") is not None]
        if acc:
            fig, ax = new_figure()
            xs = [x for x, r in zip(ex, curves.evals) if r.get("val_accuracy") is not None]
            ax.plot(xs, [r["val_accuracy"] for r in acc], "o-", color="tab:green", label="validation accuracy")
            ax.set_ylim(0, 1)
            _labelled(ax, label, "accuracy", f"validation accuracy against {axis}")
            into.figures[f"accuracy_{axis}"] = fig
    train_k = [r for r in curves.train if r.get("k_mean") is not None]
    eval_k = [r for r in curves.evals if r.get("val_k_mean") is not None]
    if not train_k and not eval_k:
        into.notes.append("no K in the records (a model without a K loop): no mean-K curve")
        return
    fig, ax = new_figure()
    if train_k:
        ax.plot([r["step"] for r in train_k], [r["k_mean"] for r in train_k], label="training (the batch's K budget)")
    if eval_k:
        ax.plot([r["step"] for r in eval_k], [r["val_k_mean"] for r in eval_k], "o-", label="validation (settled)")
        kinds = sorted({k[len("val_k_mean_"):] for r in eval_k for k in r if k.startswith("val_k_mean_")})
        for kind in kinds:
            rows = [r for r in eval_k if r.get(f"val_k_mean_{kind}") is not None]
            ax.plot([r["step"] for r in rows], [r[f"val_k_mean_{kind}"] for r in rows], ".--", lw=1,
                    label=f"validation, {kind} tokens")
    _labelled(ax, "step", "mean K per position", "mean K against step")
    into.figures["k_mean_step"] = fig


def evaluation_figures(evaluation: dict | None, k_max: int | None, into: Figures) -> None:
    """The K histogram and mean K per surprisal quantile of one detailed evaluation."""
    if not evaluation or not evaluation.get("k_histogram"):
        into.notes.append("the model has no K loop: no K histogram and no K by surprisal")
        return
    cmap = k_colormap()
    hist = {int(k): n for k, n in evaluation["k_histogram"].items()}
    top = k_max or max(hist)
    total = sum(hist.values())
    fig, ax = new_figure()
    ks = list(range(1, top + 1))
    ax.bar(ks, [hist.get(k, 0) / total for k in ks], color=[cmap((k - 1) / max(top - 1, 1)) for k in ks])
    ax.set_xlabel("K (steps the position took)")
    ax.set_ylabel("share of validation positions")
    ax.set_title(f"K histogram ({total:,} positions, mean K {evaluation.get('val_k_mean', float('nan')):.2f})")
    ax.set_xticks(ks if top <= 24 else ks[:: max(1, top // 12)])
    ax.grid(alpha=0.3, axis="y")
    into.figures["k_histogram"] = fig
    rows = evaluation.get("k_by_surprisal_quantile") or []
    if rows:  # by quantile, not by surprisal: most targets of an easy text crowd near 0 nats
        fig, ax = new_figure()
        xs = [r["quantile"] for r in rows]
        ax.bar(xs, [r["k_mean"] for r in rows], color=[cmap((r["k_mean"] - 1) / max(top - 1, 1)) for r in rows])
        ax.set_xticks(xs, [f"q{r['quantile']}\n{r['surprisal_min']:.2g}-{r['surprisal_max']:.2g}" for r in rows])
        for x, r in zip(xs, rows):
            ax.annotate(f"{r['k_mean']:.2f}", (x, r["k_mean"]), ha="center", textcoords="offset points",
                        xytext=(0, 3), fontsize=8)
        ax.set_ylim(0, top + 0.5)
        ax.set_xlabel("surprisal quantile of the targets (range in nats; q1 the least surprising)")
        ax.set_ylabel("mean K")
        ax.set_title("mean K per surprisal quantile (flat: K does not follow difficulty)")
        ax.grid(alpha=0.3, axis="y")
        into.figures["k_by_surprisal"] = fig


def dynamics_figure(dynamics: dict | None, into: Figures, moves=None) -> None:
    """The settling trajectories: a ``bench dynamics`` result (``rows``), and per-position movement
    ``moves (K,N)`` when measured here."""
    if not dynamics:
        into.notes.append("the model has no K loop: no settling trajectories")
        return
    rows = dynamics["rows"]
    ks = [r["k"] for r in rows]
    fig, (top, bottom) = new_figure((7, 6.5), rows=2, sharex=True)
    if moves is not None:
        for j in range(moves.shape[1]):
            top.plot(ks, moves[:, j].tolist(), color="0.6", lw=0.5, alpha=0.5)
        top.plot([], [], color="0.6", lw=0.5, label=f"{moves.shape[1]} positions")
    top.plot(ks, [r["move_mean"] for r in rows], "o-", color="tab:blue", label="mean")
    top.plot(ks, [r["move_median"] for r in rows], "s--", color="tab:orange", label="median")
    top.set_yscale("log")
    top.set_ylabel("RMS movement of h")
    top.set_title(f"settling: monotone {dynamics.get('monotone_share', float('nan')):.0%} of positions, "
                  f"final/peak {dynamics.get('final_over_peak', float('nan')):.3f}")
    top.grid(alpha=0.3, which="both")
    top.legend(fontsize=8)
    later = [r for r in rows if r.get("ratio_median") is not None]
    if later:
        bottom.plot([r["k"] for r in later], [r["ratio_median"] for r in later], "o-", color="tab:red",
                    label="move_k / move_k-1 (median)")
        bottom.plot([r["k"] for r in later], [r["reversal_share"] for r in later], "^-", color="tab:green",
                    label="share of steps that turn back")
        bottom.axhline(1.0, color="0.3", lw=0.8, ls=":")
        bottom.legend(fontsize=8)
    bottom.set_xlabel("K step")
    bottom.grid(alpha=0.3)
    into.figures["dynamics"] = fig


def measure_dynamics(model, data, batches: int = 1, k: int | None = None, sample: int = TRAJECTORY_SAMPLE):
    """``bench dynamics`` on ``batches`` validation batches, with the per-position movement of a
    sample of positions: (result, moves (K,sample))."""
    import torch

    from .bench.dynamics import summarize, trajectories

    inputs = [batch["inputs"] for _, batch in zip(range(batches), data.val_batches())]
    h, raw = trajectories(model, inputs, k or model.k_max)  # (K+1,N,d), (K-1,N)
    result = {"k_max": model.k_max, **summarize(h, raw)}
    move = (h[1:] - h[:-1]).float().pow(2).mean(-1).sqrt()  # (K,N)
    pick = torch.randperm(move.shape[1], generator=torch.Generator().manual_seed(0))[:sample]
    return result, move[:, pick]


# -- a run, end to end -----------------------------------------------------------------------------
@dataclass
class RunFigures:
    """What ``run_figures`` computed: the figures, and the evaluation and dynamics they show."""

    figures: Figures
    evaluation: dict
    dynamics: dict | None
    run: object  # parallax.runs.OpenRun


def run_figures(path: str | Path, dynamics_file: str | Path | None = None, run=None) -> RunFigures:
    """Every figure of the run at ``path`` (its out_dir or a checkpoint). ``dynamics_file`` is a
    ``parallax bench dynamics --json`` result; without it the dynamics are measured on one
    validation batch. ``run`` is the already opened run, if the caller has one."""
    import torch

    from .build import tokens_per_example
    from .evaluate import evaluate
    from .metrics import read_records
    from .runs import open_run

    require_matplotlib()  # fail before the work if matplotlib is missing, or the dynamics file is unreadable
    dynamics = read_dynamics(dynamics_file) if dynamics_file is not None else None
    run = run or open_run(path)
    run_dir = run_dir_of(path)
    metrics = run_dir / "metrics.jsonl"
    records = read_records(metrics) if metrics.is_file() else []
    world = _summary(run_dir).get("world_size", 1)
    figs = Figures()
    if not records:
        figs.notes.append(f"{metrics}: not found or empty: no curves")
    curve_figures(Curves.of(records, run.recipe.train.batch_size * world * tokens_per_example(run.data)), figs)
    evaluation = evaluate(run.model, run.data, torch.device("cpu"), detailed=True)
    evaluation_figures(evaluation, run.model.k_max if run.model.has_k_loop else None, figs)
    moves = None
    if dynamics is None and run.model.has_k_loop:
        dynamics, moves = measure_dynamics(run.model, run.data)
    dynamics_figure(dynamics, figs, moves)
    return RunFigures(figs, evaluation, dynamics, run)


def read_dynamics(path: str | Path) -> dict:
    """A ``parallax bench dynamics RUN --json`` result from its file."""
    fix = "write it with parallax bench dynamics RUN --json > FILE.json"
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--dynamics {path}: cannot read it as JSON ({e}); {fix}") from None
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list) or not result["rows"]:
        raise ConfigError(f"--dynamics {path}: not a `parallax bench dynamics --json` result (no 'rows'); {fix}")
    return result


def _summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
