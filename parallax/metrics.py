"""``metrics.jsonl``: one JSON record per line, training records and evaluations, appended as a run goes.

A resumed run first trims the records that the interrupted run logged past its checkpoint, so the
file reads as one run. Lines torn by a crash mid-write are dropped with a note.
"""
from __future__ import annotations

import json
from pathlib import Path

FILE = "metrics.jsonl"


def read_records(path: str | Path) -> list[dict]:
    """The readable records of a metrics file (torn or non-object lines skipped)."""
    p = Path(path)
    if p.is_dir():
        p = p / FILE
    return [r for r in map(_record, p.read_text(errors="replace").splitlines()) if r is not None]


class MetricsFile:
    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.path = Path(out_dir) / FILE
        self.enabled = enabled  # rank 0 only under DDP

    def append(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def trim(self, step: int) -> int:
        """Keep the records up to ``step`` (a resume's checkpoint); returns the number of torn lines dropped."""
        if not (self.enabled and self.path.exists()):
            return 0
        keep, torn = [], 0
        for ln in self.path.read_text(errors="replace").splitlines():
            rec = _record(ln)
            if rec is None:
                torn += ln.strip() != ""
            elif rec.get("step", 0) <= step:
                keep.append(ln)
        self.path.write_text("".join(ln + "\n" for ln in keep))
        return torn


def _record(line: str) -> dict | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None
