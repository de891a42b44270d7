"""Owning a run directory: one run at a time per ``out_dir``, and nothing of another run's overwritten.

``RunLock`` holds ``out_dir/.lock`` for the run: an exclusive ``flock`` (released by the kernel when
the process dies, however it dies), with the holder's pid, host and start time written inside so
that a second run can name it. ``check_resume_target`` refuses a resume that would mix two runs'
checkpoints, and ``set_aside`` keeps an earlier run's records when a fresh run starts in its place.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from . import checkpoint as ckpt
from .errors import ConfigError

LOCK = ".lock"


class RunLock:
    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / LOCK
        self.fd: int | None = None
        self.note: str | None = None  # set when a dead process's lock was taken over

    def acquire(self) -> RunLock:
        out_dir = self.path.parent
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"out_dir: {out_dir} is a file, not a directory; choose another out_dir=...")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"out_dir: cannot create {self.path} ({e.strerror}); check that {out_dir} is writable, "
                              f"or choose another out_dir=...") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read(self.path)
            os.close(fd)
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "another process"
            since = f", started {holder['started']}" if holder.get("started") else ""
            raise ConfigError(f"out_dir: {out_dir} is in use by a running parallax run ({who}{since}; lock "
                              f"{self.path}); wait for it to finish, or choose another out_dir=...") from None
        previous = _read(self.path)
        if previous and previous.get("pid") != os.getpid():
            same_host = previous.get("host") == socket.gethostname()
            if same_host and isinstance(previous.get("pid"), int) and ckpt.process_alive(previous["pid"]):
                # a live process on this host wrote it but holds no flock (another filesystem's semantics)
                os.close(fd)
                raise ConfigError(f"out_dir: {out_dir} is in use by pid {previous['pid']} on this host (lock "
                                  f"{self.path}); wait for it, or choose another out_dir=...")
            if not same_host:
                os.close(fd)
                raise ConfigError(f"out_dir: {out_dir} was locked by pid {previous.get('pid')} on host "
                                  f"{previous.get('host')}, which this host cannot check; if no run there uses it, "
                                  f"delete {self.path}")
            self.note = f"took over the lock of pid {previous.get('pid')}, which is no longer running"
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # no holder named: a later run sees a free lock, not a dead process
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def set_aside(metrics_file: Path) -> Path | None:
    """A fresh run (no checkpoint to resume) keeps the records an earlier run left: it renames the
    earlier metrics file to ``metrics.earlier-N.jsonl`` rather than deleting it; returns the new name."""
    if not (metrics_file.is_file() and metrics_file.stat().st_size > 0):
        return None
    n = 1
    while (target := metrics_file.with_name(f"{metrics_file.stem}.earlier-{n}{metrics_file.suffix}")).exists():
        n += 1
    os.replace(metrics_file, target)
    return target


def check_resume_target(out_dir: Path, resume_from: Path) -> None:
    """Resuming from ``resume_from`` into ``out_dir`` must not mix with, or prune, another run's checkpoints."""
    existing = ckpt.list_checkpoints(out_dir)
    if not existing:
        return
    inside = resume_from.resolve().parent == out_dir.resolve()
    if not inside:
        raise ConfigError(f"train.resume: {out_dir} already holds another run's checkpoints ({existing[-1].name}); "
                          f"resuming {resume_from} there would mix the two runs; choose a new out_dir=...")
    later = [p for p in existing if p.name > resume_from.name]
    if later:
        raise ConfigError(f"train.resume: {out_dir} holds checkpoints later than {resume_from.name} "
                          f"({later[-1].name}), which keep_last_n would prune in favour of the new ones; "
                          f"resume from {later[-1].name} "
                          f"(train.resume=auto), or resume {resume_from.name} into a new out_dir=...")
