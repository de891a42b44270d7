"""A run whose output goes to a file (nohup, a job scheduler, CI) prints a plain line every log step."""
from __future__ import annotations

import os
import re
import subprocess
import sys


def test_a_run_logging_to_a_file_prints_a_loss_line_every_log_step(tiny_recipe, tmp_path):
    log = tmp_path / "train.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "parallax", "run", str(tiny_recipe), "train.max_steps=60",
                               "train.log_every=10", "train.eval_every=30", "train.save_every=60",
                               "train.progress=true"], stdout=f, stderr=subprocess.STDOUT, env=env, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text
    lines = re.findall(r"^step (\d+)/60  loss \d+\.\d+  [\d,]+ tok/s .*elapsed \S+  eta \S+$", text, re.M)
    assert len(lines) >= 5 and [int(s) for s in lines] == [10, 20, 30, 40, 50, 60]
    assert "\x1b[" not in text  # no bar, no escape codes in a log file
