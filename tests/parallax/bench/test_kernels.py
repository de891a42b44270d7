"""``parallax bench kernels``: the bytes the step must move, and the rows it reports on a CPU."""
from __future__ import annotations

from parallax.bench import kernels


def test_step_bytes_counts_each_input_read_and_output_written_once():
    B, T, H, S, dh = 2, 3, 4, 5, 6
    n = B * T * H
    reads = n * dh + 2 * n * S * dh + n * S  # q, k, v, cum
    writes = n * dh + 2 * n * S  # out, cum, raw
    assert kernels.step_bytes(B, T, H, S, dh, 4, backward=False) == 4 * (reads + writes)
    grad_reads = reads + n * dh + n * S  # the inputs again, and the grads of out and cum
    grad_writes = n * dh + 2 * n * S * dh + n * S  # grads of q, k, v, cum
    assert kernels.step_bytes(B, T, H, S, dh, 2, backward=True) == 2 * (reads + writes + grad_reads + grad_writes)


def test_measure_on_cpu_times_the_reference_and_says_why_not_the_kernel(monkeypatch):
    monkeypatch.setattr(kernels, "SHAPES", [("tiny", 1, 3, 2, 3, 4)])
    result = kernels.measure(repeats=1)
    impls = {(r["impl"], r["mode"]) for r in result["rows"]}
    assert impls == {(i, m) for i in ("reference", "compile(reference)") for m in ("forward", "forward+backward")}
    assert any("interpreter" in n for n in result["notes"])
    for r in result["rows"]:
        assert r["seconds"] > 0 and r["launched_seconds"] is None
        assert abs(r["x_floor"] - r["seconds"] / r["floor_seconds"]) < 1e-9
