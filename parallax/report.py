"""``parallax report``: one self-contained HTML page about a run.

The page holds the run's summary (``summary.json``), a K map, the figures of ``parallax.plot``
(PNG files embedded as base64 ``data:`` URIs), notes on what was left out, and the recipe the run
was trained with (its ``config.yaml``). It loads nothing from the network: the CSS is inline and
there is no script, so it opens the same from a laptop, an archive or a mail attachment.

The K map shows tokens with each one's background coloured by the K its position took, on the
colormap of the K histogram, with a legend. Each token is one ``<span>`` carrying ``data-k`` and,
where its position is scored, ``data-surprisal``: -log p of the next token, the target predicted
at that position (the pairing of the K-by-surprisal diagnostic). Both show on hover (``title``).
The tokens are validation sequences (decoded with the run's tokenizer, or shown as token ids when
the data has none) or, with ``prompt``, a prompt and its generation, scored by one forward pass
over the whole sequence.
"""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .plot import k_colormap, run_dir_of, run_figures

MAX_TOKENS = 512  # validation tokens on the K map
CAPTIONS = {
    "loss_step": "Training loss (mean over each logging window) and validation loss against the optimizer step.",
    "loss_time": "The same losses against time.",
    "accuracy_step": "Validation accuracy against the step.",
    "accuracy_time": "Validation accuracy against time.",
    "k_mean_step": "Mean K per position: the training batches' K budget, and the settled K of each evaluation.",
    "k_histogram": "How many steps each validation position took.",
    "k_by_surprisal": "Validation targets in five equal-count quantiles of surprisal, and the mean K of each.",
    "dynamics": "Settling: RMS movement of the workspace state at each K step (log scale) with a sample of "
                "positions, and below the median step-to-step ratio and the share of steps that turn back.",
}


@dataclass
class Token:
    text: str
    k: int
    surprisal: float | None  # -log p(next token) predicted here; None where the position is not scored
    generated: bool = False


@torch.no_grad()
def score(model, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs, targets (B,T) -> K (B,T) of each position and the surprisal (B,T) of its target (NaN where -100)."""
    model.eval()
    out = model(inputs)
    logits = out.logits.float()  # (B,T,V)
    s = F.cross_entropy(logits.flatten(0, 1), targets.flatten().clamp_min(0), reduction="none").view(targets.shape)
    return out.k, s.masked_fill(targets == -100, float("nan"))


def token_text(tokenizer, i: int) -> str:
    return tokenizer.decode([i]) if tokenizer is not None else str(i)


def validation_tokens(run, max_tokens: int = MAX_TOKENS) -> list[list[Token]]:
    """The first validation sequences, up to ``max_tokens`` tokens, one list of tokens per sequence."""
    tok = run.data.tokenizer
    seqs: list[list[Token]] = []
    left = max_tokens
    for batch in run.data.val_batches():
        inputs, targets = batch["inputs"], batch["targets"]
        if inputs.dim() != 2:
            raise ConfigError(f"the K map shows token sequences; this run's inputs are {tuple(inputs.shape[1:])} "
                              f"arrays (images), not tokens")
        k, s = score(run.model, inputs, targets)  # (B,T), (B,T)
        for b in range(inputs.shape[0]):
            n = min(left, inputs.shape[1])
            seqs.append([Token(token_text(tok, int(inputs[b, t])), int(k[b, t]), _finite(s[b, t])) for t in range(n)])
            left -= n
            if left <= 0:
                return seqs
    return seqs


def prompt_tokens(run, prompt: str, max_new_tokens: int = 60, temperature: float = 0.8, top_k: int | None = None,
                  seed: int = 0) -> list[list[Token]]:
    """The prompt and its generation (one sequence), each position's K and its next token's surprisal
    from one forward pass over the whole sequence."""
    from .generate import generate

    tok = run.data.tokenizer
    if tok is None:
        raise ConfigError(f"--prompt: the '{run.recipe.data.type}' data source has no tokenizer; a prompt needs a text "
                          f"run (e.g. recipes/tinystories.yaml), or drop --prompt to map validation sequences")
    ids = tok.encode(prompt)
    res = generate(run.model, ids, max_new_tokens, temperature, top_k, seed, stop_id=tok.eos_id)
    seq = torch.tensor([ids + res.ids])  # (1,T)
    targets = torch.cat([seq[:, 1:], torch.full((1, 1), -100)], dim=1)  # (1,T) the next token; none after the last
    k, s = score(run.model, seq, targets)
    return [[Token(token_text(tok, int(seq[0, t])), int(k[0, t]), _finite(s[0, t]), t >= len(ids))
             for t in range(seq.shape[1])]]


def _finite(x: torch.Tensor) -> float | None:
    v = float(x)
    return v if v == v else None


# -- HTML ------------------------------------------------------------------------------------------
def _colour(k: int, k_max: int) -> tuple[str, str]:
    """Background and text colour of a token that took ``k`` steps."""
    r, g, b, _ = k_colormap()((k - 1) / max(k_max - 1, 1))
    text = "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "#fff"
    return f"#{round(255 * r):02x}{round(255 * g):02x}{round(255 * b):02x}", text


def kmap_html(seqs: list[list[Token]], k_max: int, spaced: bool) -> str:
    """The K map: one ``<span class="tok">`` per token; ``spaced`` puts a space between tokens (ids)."""
    lines = []
    for seq in seqs:
        spans = []
        for t in seq:
            bg, fg = _colour(t.k, k_max)
            hover = f"K {t.k}"
            attrs = f'data-k="{t.k}"'
            if t.surprisal is not None:
                hover += f" · surprisal of the next token {t.surprisal:.2f} nats"
                attrs += f' data-surprisal="{t.surprisal:.4f}"'
            text = t.text.replace("\n", "\u21b5\n")  # a newline token stays visible
            cls = "tok gen" if t.generated else "tok"
            spans.append(f'<span class="{cls}" {attrs} title="{html.escape(hover)}" '
                         f'style="background:{bg};color:{fg}">{html.escape(text)}</span>')
        lines.append(f'<div class="seq">{(" " if spaced else "").join(spans)}</div>')
    return "\n".join(lines)


def legend_html(k_max: int) -> str:
    cells = []
    for k in range(1, k_max + 1):
        bg, fg = _colour(k, k_max)
        cells.append(f'<span class="swatch" style="background:{bg};color:{fg}">{k}</span>')
    return f'<div class="legend"><span class="legend-label">K:</span>{"".join(cells)}</div>'


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1.2rem 1.6rem 3rem; color: #1d1d1f; background: #fff; line-height: 1.45; }
h1 { font-size: 1.6rem; margin: 0.2rem 0; } h2 { font-size: 1.2rem; margin: 1.6rem 0 0.5rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.meta { color: #555; font-size: 0.9rem; margin: 0; } code { font-size: 0.88em; }
table.summary { border-collapse: collapse; font-size: 0.9rem; }
table.summary td { padding: 0.15rem 1.2rem 0.15rem 0; border-bottom: 1px solid #eee; }
table.summary td:first-child { color: #555; } td.num { font-variant-numeric: tabular-nums; }
.kmap { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 0.9rem; line-height: 1.9;
        word-break: break-word; background: #fafafa; border: 1px solid #e3e3e3;
        border-radius: 6px; padding: 0.6rem 0.8rem; }
.seq { white-space: pre-wrap; margin-bottom: 0.7rem; } .seq:last-child { margin-bottom: 0; }
.tok { border-radius: 3px; padding: 0.05rem 0; cursor: default; }
.tok.gen { box-shadow: inset 0 -2px 0 #d33; }
.kmap.ids .tok { padding: 0.05rem 0.25rem; }
.kmap.ids .tok[data-surprisal] { font-weight: 700; text-decoration: underline; }
.legend { display: flex; flex-wrap: wrap; align-items: center; gap: 2px; margin: 0.4rem 0 0.6rem; font-size: 0.85rem; }
.legend-label { margin-right: 0.4rem; color: #555; }
.swatch { display: inline-block; min-width: 1.9rem; text-align: center; padding: 0.1rem 0.2rem; border-radius: 3px;
          font-variant-numeric: tabular-nums; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1rem; }
figure { margin: 0; } figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; }
pre.recipe { background: #f6f6f6; border: 1px solid #e3e3e3; border-radius: 6px; padding: 0.6rem 0.8rem;
             font-size: 0.82rem; overflow-x: auto; }
ul.notes { color: #555; font-size: 0.9rem; }
"""


def _summary_rows(summary: dict) -> str:
    rows = []
    for key, value in summary.items():
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, (dict, list)) \
            else str(value)
        rows.append(f'<tr><td>{html.escape(str(key))}</td><td class="num">{html.escape(shown)}</td></tr>')
    return "\n".join(rows)


def build_report(path: str | Path, prompt: str | None = None, max_new_tokens: int = 60, temperature: float = 0.8,
                 top_k: int | None = None, seed: int = 0, dynamics_file: str | Path | None = None,
                 max_tokens: int = MAX_TOKENS) -> str:
    """The HTML page of the run at ``path`` (its out_dir or one checkpoint)."""
    made = run_figures(path, dynamics_file)
    run, figs = made.run, made.figures
    run_dir = run_dir_of(path)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    notes = list(figs.notes)
    if not summary:
        notes.append(f"{run_dir / 'summary.json'}: not found (the run did not finish): no summary")
    model = run.model
    if model.has_k_loop:
        seqs = (prompt_tokens(run, prompt, max_new_tokens, temperature, top_k, seed) if prompt is not None
                else _or_note(lambda: validation_tokens(run, max_tokens), notes))
    else:
        seqs = None
        notes.append(f"the '{run.recipe.model.type}' model has no K loop: no K map")
    if seqs:
        n = sum(len(s) for s in seqs)
        what = (f"the prompt (plain) and its generation (underlined red), {n} tokens" if prompt is not None
                else f"the first {len(seqs)} validation sequence{'s' * (len(seqs) > 1)}, {n} tokens"
                + ("" if run.data.tokenizer is not None else ", shown as token ids, the scored ones bold"))
        kmap = (f"<p>Each token's background is the K its position took ({what}; evaluation, k_max "
                f"{model.k_max}). Hover a token for its K and the surprisal of the next token, the target "
                f"predicted there.</p>\n{legend_html(model.k_max)}\n"
                f'<div class="kmap{"" if run.data.tokenizer is not None else " ids"}">'
                f'{kmap_html(seqs, model.k_max, spaced=run.data.tokenizer is None)}</div>')
    else:
        kmap = "<p>No K map for this run (see the notes).</p>"
    figures = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(CAPTIONS.get(name, name))}</figcaption></figure>"
        for name, png in figs.png_bytes().items())
    recipe = (run.checkpoint / "config.yaml").read_text()
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    title = f"parallax report: {run_dir}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">checkpoint <code>{html.escape(str(run.checkpoint))}</code> · model
<code>{html.escape(run.recipe.model.type)}</code> · data <code>{html.escape(run.recipe.data.type)}</code></p>
<section id="summary"><h2>Summary</h2>
<table class="summary">{_summary_rows(summary)}</table></section>
<section id="kmap"><h2>K map</h2>
{kmap}</section>
<section id="plots"><h2>Figures</h2>
<div class="figures">{figures}</div></section>
{f'<section id="notes"><h2>Notes</h2><ul class="notes">{notes_html}</ul></section>' if notes else ""}
<section id="recipe"><h2>Recipe</h2>
<pre class="recipe">{html.escape(recipe)}</pre></section>
</body></html>
"""


def _or_note(make, notes: list[str]):
    try:
        return make()
    except ConfigError as e:
        notes.append(str(e))
        return None


def write_report(path: str | Path, out: str | Path | None = None, **options) -> Path:
    """Write the report of the run at ``path`` to ``out`` (default: the run's ``report.html``)."""
    dest = Path(out) if out is not None else run_dir_of(path) / "report.html"
    page = build_report(path, **options)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(page, encoding="utf-8")
    return dest
