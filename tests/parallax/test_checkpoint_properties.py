"""Randomly corrupted checkpoint files through eval and a resume: exit 0 or one line and exit 2, never a traceback."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallax.cli.main import main
from parallax.testing import train, write_tiny_recipe

FILES = ["model.safetensors", "trainer_state.safetensors", "trainer_state.json", "config.yaml"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corrupt")
    recipe = write_tiny_recipe(root / "tiny.yaml", root / "run")
    train(recipe, root / "run", "train.save_every=2", "train.keep_last_n=1", steps=2)
    return recipe, root / "run" / "step-00000002"


corruption = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("replace"), st.binary(max_size=256)),
    st.tuples(st.just("delete"), st.none()),
)


def corrupt(path: Path, how: tuple) -> None:
    kind, arg = how
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[: int(arg * len(data))])
    elif kind == "flip":
        b = bytearray(data)
        for where, mask in arg:
            if b:
                b[min(int(where * len(b)), len(b) - 1)] ^= mask
        path.write_bytes(bytes(b))
    elif kind == "replace":
        path.write_bytes(arg)
    else:
        path.unlink()


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(FILES), how=corruption, command=st.sampled_from(["eval", "resume"]))
def test_a_corrupted_checkpoint_is_never_a_traceback(trained, tmp_path_factory, name, how, command):
    import contextlib
    import io

    recipe, step = trained
    run = tmp_path_factory.mktemp("copy") / "run"
    shutil.copytree(step, run / step.name)
    corrupt(run / step.name / name, how)
    err = io.StringIO()
    argv = (["eval", str(run)] if command == "eval" else
            ["run", str(recipe), f"out_dir={run}", "train.resume=auto", "train.max_steps=2"])
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    text = err.getvalue()
    assert "Traceback" not in text, text
    assert code in (0, 2), text
    if code == 2:
        errors = [ln for ln in text.splitlines() if ln.startswith("parallax: error:")]
        assert len(errors) == 1, text
