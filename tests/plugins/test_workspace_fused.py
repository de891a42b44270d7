"""The ``cws_fused`` and ``auto`` workspaces: same options and state as ``cws``, same training run."""
from __future__ import annotations

import json

import pytest
import torch

import parallax
from parallax.cli.main import main
from parallax.registry import get_registry
from parallax.testing import assert_workspace_conforms

# The kernel runs on CUDA, or on the CPU under TRITON_INTERPRET=1 (set by conftest when there is no GPU).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def losses(run_dir):
    return [json.loads(ln)["loss"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]


def test_fused_workspace_trains_like_the_reference(tiny_recipe, tmp_path):
    for name in ("cws", "cws_fused"):
        assert main(["run", str(tiny_recipe), f"out_dir={tmp_path / name}", f"model.workspace.type={name}",
                     f"train.device={DEVICE}", "train.precision=fp32"]) == 0
    ref, fused = losses(tmp_path / "cws"), losses(tmp_path / "cws_fused")
    assert len(ref) == 6
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(ref), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["cws_fused", "auto"])
def test_fused_workspaces_conform(name):
    assert_workspace_conforms(name, device=DEVICE)


def test_state_dicts_are_interchangeable():
    reg = get_registry()
    info = parallax.DataInfo(vocab_size=5)
    mods = {n: reg.get("workspaces", n)(reg.get("workspaces", n).Config(type=n), 16, info)
            for n in ("cws", "cws_fused", "auto")}
    keys = {n: sorted(m.state_dict()) for n, m in mods.items()}
    assert keys["cws"] == keys["cws_fused"] == keys["auto"]
    mods["cws_fused"].load_state_dict(mods["cws"].state_dict())


def test_compiled_fused_workspace_is_one_graph_and_matches_the_reference():
    """Two K steps of ``cws_fused`` under ``torch.compile(fullgraph=True)`` (which raises on a graph
    break): the kernel stays in the graph as its custom op, and the outputs and every parameter's
    gradient equal the reference ``cws`` with the same weights, run eagerly."""
    reg = get_registry()
    info = parallax.DataInfo(vocab_size=5)
    mods = {n: reg.get("workspaces", n)(reg.get("workspaces", n).Config(type=n), 16, info).to(DEVICE)
            for n in ("cws", "cws_fused")}
    mods["cws_fused"].load_state_dict(mods["cws"].state_dict())
    B, T, S = 2, 3, 5
    g = torch.Generator().manual_seed(0)
    x, slots = torch.randn(B, T, 16, generator=g).to(DEVICE), torch.randn(B, T, S, 16, generator=g).to(DEVICE)
    active = (torch.rand(B, T, generator=g) > 0.3).to(DEVICE)

    def k_steps(ws, x, slots, active):
        state = ws.init_state(x, S)
        k, v = ws.project_slots(slots)
        for _ in range(2):
            state, raw = ws.step(state, ws.read(state.h), k, v, active)
        return state.h, state.cum, raw

    torch._dynamo.reset()
    compiled = torch.compile(k_steps, fullgraph=True, backend="aot_eager")
    results = {}
    for name, fn in (("cws", k_steps), ("cws_fused", compiled)):
        h, cum, raw = fn(mods[name], x, slots, active)
        loss = (h * torch.linspace(-1, 1, h.numel(), device=DEVICE).view_as(h)).sum() + cum.square().sum()
        params = [p for p in mods[name].parameters() if p.requires_grad]
        results[name] = (h, cum, raw, *torch.autograd.grad(loss, params))
    for got, want in zip(results["cws_fused"], results["cws"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
