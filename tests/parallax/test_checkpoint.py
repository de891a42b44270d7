"""Checkpoints: which plugin (and version) provides each component, and the package to install when
one is missing; the trainer state as safetensors + JSON, never a pickle (pickle bombs, the older
format and its conversion, damaged files); atomic, durable saves (fsync, swaps, stale folders, a full
disk, kill -9 at random moments)."""
from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from parallax import checkpoint as ckpt
from parallax import statefile
from parallax.cli.main import main
from parallax.errors import CheckpointError
from parallax.registry import get_registry
from parallax.runs import open_run
from parallax.testing import tiny_recipe_data

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "plugins" / "data"))
from text_helpers import text_recipe, write_txt  # noqa: E402

COMPONENTS = {"experts/mamba_siso": "parallax-cws==0.1.0", "experts/wavelet": "parallax-wavelets==0.3.1"}


@pytest.fixture
def foreign(tmp_path):
    """A checkpoint written by a model that used the expert 'wavelet' from parallax-wavelets 0.3.1."""
    recipe = tiny_recipe_data(tmp_path / "run", experts=[{"type": "mamba_siso"}, {"type": "wavelet", "slots": 2}])
    return ckpt.save(tmp_path / "run", 7, nn.Linear(2, 2), {"step": 7}, yaml.safe_dump(recipe),
                     {"components": json.dumps(COMPONENTS), "plugins": json.dumps({"wavelets": "0.3.1"})})


def test_check_plugins_names_the_package_to_install(foreign):
    with pytest.raises(CheckpointError) as caught:
        ckpt.check_plugins(foreign, get_registry())
    assert str(caught.value) == (f"{foreign}: needs expert 'wavelet' from parallax-wavelets==0.3.1, which is not "
                                 f"installed; pip install parallax-wavelets")


def test_check_plugins_passes_when_every_component_is_installed(tmp_path):
    path = ckpt.save(tmp_path, 1, nn.Linear(2, 2), {}, "",
                     {"components": json.dumps({"experts/siren": "parallax-cws==0.1.0"})})
    ckpt.check_plugins(path, get_registry())


@pytest.mark.parametrize("components", ['{"experts/mamba_siso": "parallax-cws==0.1', '["experts"]',
                                        '{"experts/siren": 3}'])
def test_a_damaged_components_entry_is_one_line_not_a_json_traceback(tmp_path, capsys, components):
    """A flipped byte in the weights' header can leave the header readable and its JSON entry not."""
    path = ckpt.save(tmp_path, 1, nn.Linear(2, 2), {}, "", {"components": components})
    with pytest.raises(CheckpointError, match=r"model.safetensors: damaged \(its header's 'components' entry"):
        ckpt.check_plugins(path, get_registry())
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "earlier step-* folder" in err, err


@pytest.mark.parametrize("how", ["config", "resume"])
def test_the_cli_names_the_package_for_a_checkpoint_recipe(foreign, tmp_path, capsys, how):
    if how == "config":
        argv = ["validate", str(foreign / "config.yaml")]
    else:
        (tmp_path / "copy.yaml").write_text((foreign / "config.yaml").read_text())
        argv = ["run", str(tmp_path / "copy.yaml"), f"train.resume={foreign}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("pip install parallax-wavelets"), err


def test_a_recipe_without_a_checkpoint_keeps_the_registry_message(foreign, tmp_path, capsys):
    (tmp_path / "plain.yaml").write_text((foreign / "config.yaml").read_text())
    assert main(["validate", str(tmp_path / "plain.yaml")]) == 2
    assert "model.experts.1.type: unknown expert 'wavelet'" in capsys.readouterr().err


def test_state_tensors_are_detached_contiguous_cpu_copies_of_the_state_dict():
    lin = nn.Linear(3, 2)
    state = ckpt.state_tensors(lin)
    assert set(state) == {"weight", "bias"} and not state["weight"].requires_grad and state["weight"].is_contiguous()


# -- the trainer state: safetensors + JSON, never a pickle ------------------------------------------
def equal_states(a, b) -> bool:
    """The same document and the same tensors: types (tuples, int keys) and NaNs included."""
    (ta, da), (tb, db) = statefile.encode(a), statefile.encode(b)
    return da == db and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def one_line(capsys, argv, logged: bool = False) -> str:
    """Exit 2 and one error line, the only line of stderr (or, ``logged``, the last after a run's log lines)."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("parallax: error: ")]
    assert rc == 2 and errors == lines[-1:] and "Traceback" not in err, (rc, err)
    assert logged or len(lines) == 1, err
    return lines[-1]


def test_a_checkpoint_holds_no_pickle(tiny_recipe, tmp_path):
    assert main(["run", str(tiny_recipe), "train.max_steps=3"]) == 0
    ck = tmp_path / "run" / "step-00000003"
    assert {p.name for p in ck.iterdir()} == {"model.safetensors", "config.yaml", "trainer_state.safetensors",
                                              "trainer_state.json"}
    assert all(not p.read_bytes().startswith(b"\x80") for p in ck.iterdir())  # pickle protocol 2+ opcode
    state = ckpt.load_trainer_state(ck)
    assert state["step"] == 3 and isinstance(state["rng"]["python"], tuple)
    assert all(isinstance(k, int) for k in state["optimizer"]["state"])


def test_no_pickle_load_remains_in_the_source():
    found = []
    for top in ("parallax", "plugins", "kernels"):
        for f in (REPO / top).rglob("*.py"):
            text = f.read_text(encoding="utf-8")
            found += [f"{f}: {s}" for s in ("weights_only=False", "pickle.load", "pickle.loads") if s in text]
    assert not found


# -- the older, pickled format --------------------------------------------------------------------
def make_legacy(ck: Path) -> dict:
    """Rewrite ``ck`` as the format before: the trainer's state dict, torch.save'd to trainer_state.pt."""
    state = ckpt.load_trainer_state(ck)
    torch.save(state, ck / "trainer_state.pt")
    (ck / "trainer_state.json").unlink()
    (ck / "trainer_state.safetensors").unlink()
    return state


def test_an_old_checkpoint_is_named_and_converts_on_request(tiny_recipe, tmp_path, capsys):
    common = [str(tiny_recipe), "train.optimizer.type=muon", "train.optimizer.lr=0.02"]
    assert main(["run", *common, "train.max_steps=3"]) == 0
    ck = tmp_path / "run" / "step-00000003"
    old = make_legacy(ck)
    capsys.readouterr()
    for argv in (["run", *common, "train.max_steps=4", "train.resume=auto"], ["eval", str(ck)]):
        line = one_line(capsys, argv)
        assert "trainer_state.pt is a pickle" in line and f"parallax convert-checkpoint {ck} --trust-pickle" in line
    line = one_line(capsys, ["convert-checkpoint", str(ck)])
    assert "pass --trust-pickle" in line
    assert main(["convert-checkpoint", str(tmp_path / "run"), "--trust-pickle"]) == 0
    assert f"converted {ck}" in capsys.readouterr().out
    assert not (ck / "trainer_state.pt").exists()
    assert equal_states(ckpt.load_trainer_state(ck), old)  # Muon + AdamW, scheduler, scaler, RNG states
    assert main(["run", *common, "train.max_steps=4", "train.resume=auto"]) == 0
    assert "resumed from" in capsys.readouterr().err


class Bomb:
    """A pickle whose loading creates ``marker`` (as one calling os.system would run a command)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_converting_a_hostile_pickle_runs_nothing_even_when_trusted(tiny_recipe, tmp_path, capsys):
    assert main(["run", str(tiny_recipe), "train.max_steps=3"]) == 0
    ck = tmp_path / "run" / "step-00000003"
    make_legacy(ck)
    marker = tmp_path / "marker"
    torch.save({"step": 3, "x": Bomb(marker)}, ck / "trainer_state.pt")
    capsys.readouterr()
    line = one_line(capsys, ["convert-checkpoint", str(ck), "--trust-pickle"])
    assert "not converted" in line and not marker.exists()
    assert not (ck / "trainer_state.json").exists()


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, out_dir) of a trained text run: its checkpoint holds every kind of file (a tokenizer too)."""
    tmp = tmp_path_factory.mktemp("textrun")
    recipe = text_recipe(tmp, [write_txt(tmp / "s.txt", 40)])
    assert main(["run", str(recipe), "train.max_steps=3"]) == 0
    return recipe, tmp / "run"


COMMANDS = {
    "resume=PATH": lambda r, run, ck, new: ["run", str(r), f"out_dir={new}", f"train.resume={ck}", "train.max_steps=5"],
    "resume=auto": lambda r, run, ck, new: ["run", str(r), f"out_dir={run}", "train.resume=auto", "train.max_steps=5"],
    "eval": lambda r, run, ck, new: ["eval", str(ck)],
    "generate": lambda r, run, ck, new: ["generate", str(ck), "--prompt", "Once", "--max-new-tokens", "2"],
    "bench halting": lambda r, run, ck, new: ["bench", "halting", str(r), "--checkpoint", str(ck), "--batches", "1",
                                              "--repeats", "1"],
}


@pytest.mark.parametrize("where", ["trainer_state.pt", "every file"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_pickle_bomb_in_a_checkpoint_runs_nothing(text_run, tmp_path, capsys, where, command):
    recipe, trained = text_run
    run = shutil.copytree(trained, tmp_path / "run")
    ck = run / "step-00000003"
    marker = tmp_path / "marker"
    if where == "trainer_state.pt":  # a checkpoint of the older format, or one dressed up as it
        for name in ("trainer_state.json", "trainer_state.safetensors"):
            (ck / name).unlink()
    else:  # every file that is not safetensors, and the older format's file beside them
        for f in ck.iterdir():
            if f.suffix != ".safetensors":
                f.write_bytes(pickle.dumps(Bomb(marker)))
        assert {p.name for p in ck.iterdir()} >= {"config.yaml", "tokenizer.json", "trainer_state.json"}
    torch.save(Bomb(marker), ck / "trainer_state.pt")
    capsys.readouterr()
    line = one_line(capsys, COMMANDS[command](recipe, run, ck, tmp_path / "new"))
    assert not marker.exists()
    if where == "trainer_state.pt":
        assert "parallax convert-checkpoint" in line


# -- damaged trainer state ------------------------------------------------------------------------
@pytest.mark.parametrize("damage, needle", [
    (lambda ck: (ck / "trainer_state.json").write_text('{"format": "parallax-state/1", "state": {'), "not JSON"),
    (lambda ck: (ck / "trainer_state.json").write_bytes(b"\xff\xfe"), "not JSON"),
    (lambda ck: (ck / "trainer_state.safetensors").write_bytes((ck / "trainer_state.safetensors").read_bytes()[:-7]),
     "not a readable safetensors file"),
    (lambda ck: (ck / "trainer_state.safetensors").unlink(), "No such file"),
    (lambda ck: (ck / "trainer_state.json").unlink(), "no trainer_state.json; the checkpoint is incomplete"),
])
def test_resuming_from_a_damaged_trainer_state_is_one_line(tiny_recipe, tmp_path, capsys, damage, needle):
    assert main(["run", str(tiny_recipe), "train.max_steps=3"]) == 0
    damage(tmp_path / "run" / "step-00000003")
    capsys.readouterr()
    line = one_line(capsys, ["run", str(tiny_recipe), "train.max_steps=4", "train.resume=auto"])
    assert needle in line and "earlier step-* folder" in line


def test_a_state_file_referring_to_a_missing_tensor_is_one_line(tiny_recipe, tmp_path):
    assert main(["run", str(tiny_recipe), "train.max_steps=3"]) == 0
    ck = tmp_path / "run" / "step-00000003"
    f = ck / "trainer_state.json"
    f.write_text(f.read_text().replace('"rng.torch"', '"rng.elsewhere"'))
    with pytest.raises(CheckpointError, match="trainer_state.json: damaged .*does not hold"):
        ckpt.load_trainer_state(ck)


# -- atomic, durable saves ------------------------------------------------------------------------
def save_linear(out_dir: Path, step: int, value: float) -> Path:
    lin = nn.Linear(2, 2)
    nn.init.constant_(lin.weight, value)
    return ckpt.save(out_dir, step, lin, {"step": step, "value": value}, "", {})


def weight(ck: Path) -> float:
    from safetensors.torch import load_file

    return load_file(str(ck / "model.safetensors"))["weight"][0, 0].item()


def test_every_file_the_folder_and_the_parent_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    final = ckpt.save(tmp_path, 1, nn.Linear(2, 2), {"step": 1}, "x: 1\n", {}, files={"tokenizer.json": b"{}"})
    tmp = str(tmp_path / f".tmp-step-00000001-{os.getpid()}")
    names = {p.name for p in final.iterdir()}
    assert {f"{tmp}/{n}" for n in names} | {tmp} <= set(synced[:-1])
    assert synced[-1] == str(tmp_path)  # after the rename


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "aside"])
def test_resaving_a_step_never_leaves_it_missing(tmp_path, monkeypatch, exchange):
    final = save_linear(tmp_path, 1, 1.0)
    if not exchange:
        monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)
    seen = []
    real_rename, real_rmtree = os.rename, shutil.rmtree

    def look():  # the step (or, between the two renames, the copy set aside) is complete at every moment
        aside = tmp_path / f".old-step-00000001-{os.getpid()}"
        seen.append((final / "model.safetensors").is_file() or (aside / "model.safetensors").is_file())

    monkeypatch.setattr(os, "rename", lambda a, b: (look(), real_rename(a, b), look()))
    monkeypatch.setattr(shutil, "rmtree", lambda p, **kw: (look(), real_rmtree(p, **kw)))
    assert save_linear(tmp_path, 1, 2.0) == final
    assert seen and all(seen)
    assert weight(final) == 2.0 and ckpt.load_trainer_state(final)["value"] == 2.0
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]


def test_a_failed_swap_puts_the_old_step_back(tmp_path, monkeypatch):
    final = save_linear(tmp_path, 1, 1.0)
    monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)
    real = os.rename

    def rename(a, b):
        if Path(a).name.startswith(".tmp-") and Path(b) == final:
            raise OSError(errno.EIO, "Input/output error", str(b))
        return real(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(CheckpointError, match="could not save checkpoint step-00000001: Input/output error"):
        save_linear(tmp_path, 1, 2.0)
    assert weight(final) == 1.0 and [p.name for p in tmp_path.iterdir()] == ["step-00000001"]


def test_pruning_renames_a_step_away_before_removing_it(tmp_path, monkeypatch):
    for step in (1, 2):
        save_linear(tmp_path, step, 1.0)
    monkeypatch.setattr(shutil, "rmtree", lambda p, **kw: None)  # killed after the rename, before any file goes
    ckpt.save(tmp_path, 3, nn.Linear(2, 2), {}, "", {}, keep_last_n=2)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    assert (tmp_path / f".tmp-step-00000001-{os.getpid()}").is_dir()  # whole, under a name no load reads
    ckpt.clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002", "step-00000003"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_clean_stale_removes_the_folders_of_dead_processes_only(tmp_path):
    save_linear(tmp_path, 1, 1.0)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = dead_pid()
        for name in (f".tmp-step-00000002-{dead}", f".tmp-step-00000003-{live.pid}",
                     f".tmp-step-00000004-{os.getpid()}", f".old-step-00000001-{dead}"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "model.safetensors").write_bytes(b"partial")
        shutil.copytree(tmp_path / "step-00000001", tmp_path / f".old-step-00000005-{dead}")  # a crash mid-swap
        removed = ckpt.clean_stale(tmp_path)
        assert {p.name for p in removed} == {f".tmp-step-00000002-{dead}", f".tmp-step-00000004-{os.getpid()}",
                                             f".old-step-00000001-{dead}"}
        assert sorted(p.name for p in tmp_path.iterdir()) == [f".tmp-step-00000003-{live.pid}", "step-00000001",
                                                              "step-00000005"]
        assert weight(tmp_path / "step-00000005") == 1.0  # the step set aside is back in place
    finally:
        live.kill()
        live.wait()


def test_save_and_a_trainer_start_clean_up_stale_folders(tiny_recipe, tmp_path):
    (tmp_path / "out").mkdir()
    stale = tmp_path / "out" / f".tmp-step-00000009-{dead_pid()}"
    stale.mkdir()
    save_linear(tmp_path / "out", 1, 1.0)
    assert not stale.exists()
    stale = tmp_path / "run" / f".tmp-step-00000003-{dead_pid()}"
    stale.mkdir(parents=True)
    from parallax.recipe import load_recipe
    from parallax.trainer import Trainer

    trainer = Trainer(load_recipe(str(tiny_recipe), ["train.max_steps=1"]))
    trainer.setup()
    trainer.lock.release()
    assert not stale.exists()


def full_disk(path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_during_a_save_is_one_error_naming_the_older_checkpoint(tmp_path, monkeypatch):
    older = save_linear(tmp_path, 1, 1.0)
    monkeypatch.setattr(statefile, "dump", lambda obj, tensors_path, json_path: full_disk(tensors_path))
    with pytest.raises(CheckpointError) as caught:
        save_linear(tmp_path, 2, 2.0)
    msg = str(caught.value)
    assert msg.startswith("could not save checkpoint step-00000002: No space left on device "
                          "(writing trainer_state.safetensors);")
    assert "free space on the disk of" in msg and "choose another out_dir" in msg
    assert f"the newest intact checkpoint is {older}" in msg
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]  # the temporary folder is gone


def test_a_full_disk_during_training_exits_2_with_one_line(tiny_recipe, tmp_path, monkeypatch, capsys):
    real = statefile.save_tensors
    calls = []

    def save_tensors(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) > 2:  # the weights and trainer state of the first checkpoint are written; then the disk is full
            full_disk(path)
        return real(tensors, path, metadata)

    monkeypatch.setattr(statefile, "save_tensors", save_tensors)
    line = one_line(capsys, ["run", str(tiny_recipe), "train.max_steps=6", "train.save_every=3"], logged=True)
    assert "could not save checkpoint step-00000006: No space left on device" in line
    assert f"the newest intact checkpoint is {tmp_path / 'run' / 'step-00000003'}" in line
    assert ckpt.load_trainer_state(tmp_path / "run" / "step-00000003")["step"] == 3


def test_a_real_full_disk_is_one_line_and_keeps_the_older_checkpoints(tiny_recipe, tmp_path, capsys):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    small = tmp_path / "small"
    small.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        out = small / "run"
        line = one_line(capsys, ["run", str(tiny_recipe), f"out_dir={out}", "train.max_steps=1000",
                                 "train.save_every=1", "train.eval_every=100000", "train.keep_last_n=100000"],
                        logged=True)
        saved = ckpt.list_checkpoints(out)
        assert "No space left on device" in line and "free space" in line and len(saved) >= 2, line
        assert f"the newest intact checkpoint is {saved[-1]}" in line
        assert not list(out.glob(".tmp-*"))
        for ck in saved:
            open_run(ck)
            ckpt.load_trainer_state(ck)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# -- kill -9 at random moments ---------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_every_step_loadable(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    cli = [sys.executable, "-m", "parallax", "run", str(tiny_recipe), "train.save_every=1", "train.eval_every=100000",
           "train.keep_last_n=100000", "train.log_every=1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    kills = 0
    for i in range(12):
        before = len(ckpt.list_checkpoints(out))
        proc = subprocess.Popen([*cli, "train.max_steps=100000", *(["train.resume=auto"] if i else [])], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while len(ckpt.list_checkpoints(out)) <= before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere among the steps and saves
        assert proc.poll() is None, "the run stopped by itself"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 10
    last = int(ckpt.STEP_RE.match(ckpt.latest(out).name).group(1))
    done = subprocess.run([*cli, f"train.max_steps={last + 1}", "train.resume=auto"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not [p for p in out.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    steps = ckpt.list_checkpoints(out)
    assert len(steps) > kills
    for ck in steps:
        open_run(ck)
        assert ckpt.load_trainer_state(ck)["step"] == int(ck.name.split("-")[1])
