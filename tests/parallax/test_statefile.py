"""State files: nested trainer state <-> safetensors tensors + strict JSON, exactly, without pickle."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from parallax import statefile
from parallax.optim import MuonAdamW


def same(a, b) -> bool:
    """Equal values of equal types, all the way down (a tuple is not a list, an int key not a str)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def round_trip(obj, tmp_path):
    statefile.dump(obj, tmp_path / "s.safetensors", tmp_path / "s.json")
    return statefile.load(tmp_path / "s.safetensors", tmp_path / "s.json")


def trained_muon_state() -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    opt = MuonAdamW(model, lr=0.02, weight_decay=0.0, muon_options={"momentum": 0.95},
                    adamw_options={"betas": (0.9, 0.95)})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0 ** 10)
    for _ in range(3):
        loss = model(torch.randint(0, 10, (4, 5))).logsumexp(-1).mean()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
    return {
        "step": 3, "optimizer_type": "muon", "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
    }


def test_the_trainer_state_of_muon_adamw_round_trips_exactly(tmp_path):
    state = trained_muon_state()
    assert state["optimizer"]["muon"]["state"] and state["optimizer"]["adamw"]["state"]  # moments were written
    assert state["scaler"]["scale"] > 0  # an enabled GradScaler saves its scale and growth tracker
    back = round_trip(state, tmp_path)
    assert same(state, back)
    assert all(isinstance(k, int) for k in back["optimizer"]["adamw"]["state"])  # keyed by parameter index
    assert isinstance(back["optimizer"]["adamw"]["param_groups"][0]["betas"], tuple)


def test_a_loaded_state_restores_optimizer_scheduler_and_rngs(tmp_path):
    state = round_trip(trained_muon_state(), tmp_path)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    opt = MuonAdamW(model, lr=0.02, weight_decay=0.0, muon_options={"momentum": 0.95}, adamw_options={})
    opt.load_state_dict(state["optimizer"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    sched.load_state_dict(state["scheduler"])
    assert sched.last_epoch == 3
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_odd_values_keep_their_types(tmp_path):
    obj = {
        "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "tiny": 5e-324, "big": 2 ** 70,
        "t": (1, (2.5, None), []), "$dollar": {"$tensor": "not a reference"}, 3: "int key", (1, "a"): True,
        "scalar": torch.tensor(7.0), "empty": torch.zeros(0, 3), "bf16": torch.ones(2, dtype=torch.bfloat16),
        "u32": np.arange(5, dtype=np.uint32), "bools": torch.tensor([True, False]), "s": "ü", "b": False,
    }
    back = round_trip(obj, tmp_path)
    assert same(obj, back)


def test_the_json_is_strict_and_names_tensors_by_key_path(tmp_path):
    obj = {"a": {"b": [torch.ones(2), float("nan")]}}
    statefile.dump(obj, tmp_path / "s.safetensors", tmp_path / "s.json")
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    from safetensors.torch import load_file

    assert list(load_file(str(tmp_path / "s.safetensors"))) == ["a.b.0"]


def test_tensors_that_share_memory_are_stored_apart(tmp_path):
    base = torch.arange(6.0)
    obj = {"x": base, "y": base.view(2, 3), "z": base}
    back = round_trip(obj, tmp_path)
    assert same(obj, back)


def test_an_object_is_refused_naming_its_key_path():
    with pytest.raises(TypeError, match="optimizer.fn: a function cannot be stored"):
        statefile.encode({"optimizer": {"fn": lambda: 0}})
    with pytest.raises(TypeError, match="x.0: a float32 cannot"):
        statefile.encode({"x": [np.float32(1.0)]})


@pytest.mark.parametrize("doc, needle", [
    ({"$tensor": "missing"}, "does not hold"),
    ({"$pickle": "x"}, "unknown tag"),
    ({"$float": "1e999"}, "$float"),
    ({"$tuple": 3}, "not a list"),
    ({"$dict": [[[1], 2]]}, "key of type list"),
    ({"$dict": [1]}, "pairs"),
])
def test_a_document_encode_never_writes_is_a_value_error(doc, needle):
    with pytest.raises(ValueError, match=needle.replace("$", r"\$")):
        statefile.decode(doc, {})


@pytest.mark.parametrize("damage, needle", [
    (lambda p: p.write_bytes(b"\x80\x04garbage"), "not JSON"),
    (lambda p: p.write_text('{"format": "parallax-state/1", "state": NaN}'), "bare constant NaN"),
    (lambda p: p.write_text('{"format": "other/9", "state": {}}'), "its format is 'other/9'"),
    (lambda p: p.write_text("[1, 2]"), "not a parallax-state/1 state file"),
])
def test_a_damaged_document_is_a_value_error(tmp_path, damage, needle):
    statefile.dump({"a": torch.ones(1)}, tmp_path / "s.safetensors", tmp_path / "s.json")
    damage(tmp_path / "s.json")
    with pytest.raises(ValueError, match=needle):
        statefile.load(tmp_path / "s.safetensors", tmp_path / "s.json")


def test_a_truncated_tensor_file_is_a_value_error(tmp_path):
    statefile.dump({"a": torch.ones(100)}, tmp_path / "s.safetensors", tmp_path / "s.json")
    f = tmp_path / "s.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        statefile.check_tensors(f)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        statefile.load(f, tmp_path / "s.json")


def test_a_full_disk_while_writing_tensors_is_an_os_error(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(statefile, "save_file", full)
    with pytest.raises(OSError) as caught:
        statefile.save_tensors({"a": torch.ones(1)}, tmp_path / "s.safetensors")
    assert caught.value.errno == 28 and caught.value.filename == str(tmp_path / "s.safetensors")
