"""YAML alias bombs, and a guard that fails a test instead of letting it hang (recipe-loading tests)."""
from __future__ import annotations

import signal
from contextlib import contextmanager

import pytest


@contextmanager
def within(seconds: float):
    """Fail, instead of hanging, when the block takes longer than ``seconds``."""
    def expire(signum, frame):
        pytest.fail(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def bomb(levels: int = 9, width: int = 9) -> str:
    """``levels`` anchors, each a list of ``width`` aliases of the previous one: width**levels values."""
    lines = ['a0: &a0 ["x"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"
