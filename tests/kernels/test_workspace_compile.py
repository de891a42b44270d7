"""The fused workspace kernels compile for real GPUs, on a machine without one.

The parity tests run the kernels under ``TRITON_INTERPRET=1``, which executes the Python source and
so never meets the compiler: a construct the interpreter accepts but ``triton.compile`` rejects
(a non-constexpr shape, a type mismatch between branches, a helper's tuple return) would pass
there and fail on the first CUDA call. Here each kernel is compiled ahead of time, through PTX to a
cubin, for Ampere (sm_80) and Hopper (sm_90): each tile of the shipped shapes, with and without
halted positions, in float32, bfloat16 (also beside a float32 cum, as autocast gives) and float16,
with the warp count the launcher picks. (Triton's specialisation of integer arguments equal to 1
is not covered.)
The compiler runs in a child process, since this process has the interpreter switched on.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ARCHS = (80, 90)
# q/k/v dtype, then cum's: autocast gives bf16 projections beside a float32 cum
DTYPES = ("fp32", "bf16", "bf16+fp32cum", "fp16")
# (BS, BH, BD) of the shipped recipes (S=8, H=4, dh=16), and the text-wide shape (H=8, dh=32)
TILES = ((8, 4, 16), (8, 8, 32))
FP32_ONLY = {"DECAY", "GDECAY_PART"}  # the launcher passes these as float32 whatever the inputs' dtype
CUM_LIKE = {"CUM", "CUM_OUT", "RAW", "G_CUM", "GCUM0"}  # (N,H,S) tensors, in cum's dtype


def _variants():
    """(kernel, arch, dtype, constexprs) for each tile, dtype mix and flag the launcher can request."""
    for arch, dtype, (bs, bh, bd), active in itertools.product(ARCHS, DTYPES, TILES, (True, False)):
        yield "fwd", arch, dtype, {"HAS_ACTIVE": active, "BS": bs, "BH": bh, "BD": bd}
    for arch, dtype, active, gcum in itertools.product(ARCHS, DTYPES, (True, False), (True, False)):
        yield "bwd", arch, dtype, {"HAS_ACTIVE": active, "HAS_GCUM": gcum, "BS": 8, "BH": 4, "BD": 16}
    for arch, dtype in itertools.product(ARCHS, ("fp32", "bf16+fp32cum")):  # the widest tile, in both directions
        yield "bwd", arch, dtype, {"HAS_ACTIVE": True, "HAS_GCUM": True, "BS": 8, "BH": 8, "BD": 32}


def _warps(consts: dict) -> int:
    return 4 if consts["BS"] * consts["BH"] * consts["BD"] >= 2048 else 2  # as fused._launch_shape


def _name(kernel, arch, dtype, consts) -> str:
    return f"{kernel}-sm{arch}-{dtype}-" + "-".join(f"{k}={v}" for k, v in consts.items())


def _compile_all() -> dict:
    """Child process: compile every variant; {name: PTX target line or the error}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from parallax_kernels.workspace import fused

    kernels = {"fwd": fused._fwd_kernel, "bwd": fused._bwd_kernel}
    results = {}
    for kernel, arch, dtype, consts in _variants():
        fn = kernels[kernel]
        sig = {}
        for a in fn.arg_names:
            if a in consts:
                sig[a] = "constexpr"
            elif a in ("S", "H", "DH"):
                sig[a] = "i32"
            elif a in ("scale", "inv_ln_base"):
                sig[a] = "fp32"
            else:
                data, _, cum = dtype.partition("+")
                cum = cum.removesuffix("cum") or data
                sig[a] = ("*u8" if a == "ACTIVE" else "*fp32" if a in FP32_ONLY
                          else f"*{cum}" if a in CUM_LIKE else f"*{data}")
        src = ASTSource(fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        try:
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": _warps(consts)})
            ptx = compiled.asm["ptx"]
            target = next((line.strip() for line in ptx.splitlines() if line.startswith(".target")), "")
            results[_name(kernel, arch, dtype, consts)] = {"target": target, "cubin": len(compiled.asm["cubin"])}
        except Exception as e:  # reported per variant, so one failure does not hide the others
            results[_name(kernel, arch, dtype, consts)] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    return results


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton-cache"))  # compile for real, not from a cache
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"the compile process failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", [_name(*v) for v in _variants()])
def test_kernel_compiles_to_cubin(compiled, variant):
    result = compiled[variant]
    assert "error" not in result, result.get("error")
    arch = variant.split("-")[1].removeprefix("sm")
    assert result["target"].startswith(f".target sm_{arch}")
    assert result["cubin"] > 0


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
