"""``optimizer.type: muon``: torch.optim.Muon on exactly the 2-D hidden weights, AdamW on the rest."""
from __future__ import annotations

import pytest
import torch

from parallax.build import build_data
from parallax.errors import ConfigError
from parallax.model import build_model
from parallax.optim import MuonAdamW, make_optimizer, muon_split
from parallax.recipe import load_recipe
from parallax.registry import get_registry


def model_and_recipe(path, *overrides):
    recipe = load_recipe(str(path), list(overrides))
    data = build_data(recipe, get_registry())
    return build_model(recipe.model, data.info), recipe


def test_muon_gets_exactly_the_hidden_weight_matrices(make_tiny_recipe):
    path = make_tiny_recipe(experts=[{"type": "attention_probe", "slots": 1, "variant": "covariance"},
                                     {"type": "memory_bank", "slots": 1, "entries": 4},
                                     {"type": "mamba_siso", "slots": 1, "d_state": 2}])
    model, recipe = model_and_recipe(path, "train.optimizer.type=muon", "train.optimizer.lr=0.02",
                                     "train.optimizer.adamw={lr: 0.001}")
    opt = make_optimizer(model, recipe.train.optimizer)
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {"muon": [], "adamw": []}
    for g in opt.param_groups:
        groups[g["optimizer"]] += [names[id(p)] for p in g["params"]]
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    tied = {n for n in linears if model.get_parameter(n) is model.encoder.embed.weight}
    assert set(groups["muon"]) == linears - tied - {"decoder.head.weight"}
    assert all(model.get_parameter(n).ndim == 2 for n in groups["muon"])
    assert "encoder.embed.weight" in groups["adamw"]  # the embedding table (tied to the head)
    assert "experts.1.bank" in groups["adamw"]  # a 2-D table, not a hidden weight
    assert any(n.endswith("weight") and model.get_parameter(n).ndim == 1 for n in groups["adamw"])  # norms
    assert "experts.2.dt_proj.bias" in groups["adamw"] and "experts.2.A_log" in groups["adamw"]
    assert sorted(groups["muon"] + groups["adamw"]) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert isinstance(opt.muon, torch.optim.Muon) and isinstance(opt.adamw, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups if g["optimizer"] == "adamw"] == [0.001] * 2
    assert opt.muon.param_groups[0]["lr"] == 0.02


def test_muon_steps_schedules_and_round_trips(make_tiny_recipe):
    model, recipe = model_and_recipe(make_tiny_recipe(), "train.optimizer.type=muon")
    opt = make_optimizer(model, recipe.train.optimizer)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    assert all(g["lr"] == pytest.approx(recipe.train.optimizer.lr * 0.5) for g in opt.param_groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model(torch.randint(0, 10, (2, 6)))
    out.logits.square().mean().backward()
    opt.step()
    sched.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    hidden, _ = muon_split(model)
    assert {n for n, _ in hidden} <= moved
    fresh = make_optimizer(model, recipe.train.optimizer)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.state_dict()["muon"]["state"].keys() == opt.state_dict()["muon"]["state"].keys()
    # after loading, a scheduler stepping the outer groups still reaches the groups each half reads
    inner = fresh.muon.param_groups + fresh.adamw.param_groups
    assert len(fresh.param_groups) == len(inner) and all(a is b for a, b in zip(fresh.param_groups, inner))


def test_muon_options_are_validated_on_both_sides(make_tiny_recipe):
    path = make_tiny_recipe()
    load_recipe(str(path), ["train.optimizer.type=muon", "train.optimizer.ns_steps=3",
                            "train.optimizer.adamw={betas: [0.9, 0.95]}"])
    with pytest.raises(ConfigError, match=r"train\.optimizer\.ns_stepz: not an option of torch\.optim\.Muon; "
                                          r"did you mean 'ns_steps'"):
        load_recipe(str(path), ["train.optimizer.type=muon", "train.optimizer.ns_stepz=3"])
    with pytest.raises(ConfigError, match=r"train\.optimizer\.adamw\.betaz: not an option of torch\.optim\.AdamW"):
        load_recipe(str(path), ["train.optimizer.type=muon", "train.optimizer.adamw={betaz: 1}"])
    with pytest.raises(ConfigError, match=r"train\.optimizer\.adamw\.lr"):
        load_recipe(str(path), ["train.optimizer.type=muon", "train.optimizer.adamw={lr: -1}"])


def test_the_muon_recipe_puts_exactly_the_hidden_weights_under_muon():
    model, recipe = model_and_recipe("recall_covariance_muon")
    opt = make_optimizer(model, recipe.train.optimizer)
    muon = {id(p) for g in opt.param_groups if g["optimizer"] == "muon" for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert names == {
        f"{n}.weight" for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m.weight is not model.encoder.embed.weight and n != "decoder.head"
    }
    assert "experts.1.r_proj.weight" in names and "experts.1.q_proj.weight" in names  # the covariance probe's
    assert all(p.ndim == 2 for n, p in model.named_parameters() if n in names)
    assert len(names) == len(opt.muon.param_groups[0]["params"])
