"""One run per out_dir, and no run deletes or mixes another run's records or checkpoints."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from parallax.cli.main import main
from parallax.rundir import RunLock
from parallax.testing import train

HOLD = ("import sys, time; from parallax.rundir import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)")


def test_a_second_run_on_a_busy_out_dir_exits_2_at_once_naming_the_lock_and_the_process(tiny_recipe, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        assert main(["run", str(tiny_recipe), "train.resume=auto"]) == 2
        assert time.time() - t0 < 10
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"is in use by a running parallax run (pid {holder.pid} on " in err and ".lock" in err
        assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing written into the busy out_dir
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_runs_lock_does_not_block_the_next_run(tiny_recipe, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL: the kernel drops the flock; the pid left in the file is dead
    holder.wait()
    assert main(["run", str(tiny_recipe), "train.max_steps=2"]) == 0
    lock = RunLock(tmp_path / "run").acquire()  # released at the end of the run
    lock.release()


def test_resuming_from_a_path_into_another_runs_out_dir_is_refused(tiny_recipe, tmp_path, capsys):
    train(tiny_recipe, tmp_path / "a", steps=3)
    train(tiny_recipe, tmp_path / "b", "seed=1", steps=6)
    before = (tmp_path / "b" / "metrics.jsonl").read_text()
    code = main(["run", str(tiny_recipe), f"out_dir={tmp_path / 'b'}",
                 f"train.resume={tmp_path / 'a' / 'step-00000003'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "already holds another run's checkpoints" in err and "choose a new out_dir" in err
    assert (tmp_path / "b" / "metrics.jsonl").read_text() == before  # the other run's records are untouched


def test_resuming_an_older_step_of_the_same_run_past_its_later_checkpoints_is_refused(tiny_recipe, tmp_path, capsys):
    train(tiny_recipe, tmp_path / "run", "train.keep_last_n=3", steps=6)
    code = main(["run", str(tiny_recipe), f"train.resume={tmp_path / 'run' / 'step-00000003'}"])
    assert code == 2
    assert "holds checkpoints later than step-00000003 (step-00000006)" in capsys.readouterr().err


def test_a_fresh_run_keeps_an_earlier_runs_records(tiny_recipe, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 40, "loss": 1.0}) + "\n")
    assert main(["run", str(tiny_recipe), "train.max_steps=2"]) == 0
    assert (run / "metrics.earlier-1.jsonl").read_text() == json.dumps({"step": 40, "loss": 1.0}) + "\n"
    assert "kept it as metrics.earlier-1.jsonl" in capsys.readouterr().err


def test_an_out_dir_that_is_a_file_says_so(tiny_recipe, tmp_path, capsys):
    (tmp_path / "run").write_text("not a directory")
    assert main(["run", str(tiny_recipe)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory; choose another out_dir" in err and "File exists" not in err
