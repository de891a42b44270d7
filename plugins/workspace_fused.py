"""The ``cws_fused`` and ``auto`` workspaces: the reference ``cws`` with its step in one Triton kernel.

Same parameters, options and state dict as ``cws`` (a checkpoint moves freely between them); only
the step differs: ``parallax_kernels.workspace.fused.workspace_step_fused``, whose parity with the
reference is tested forward and backward. The kernel is the custom op
``torch.ops.parallax_kernels.workspace_step``, so ``torch.compile`` keeps the step inside its graph
(no graph break around the Triton launch). ``auto`` uses the kernel on CUDA tensors when Triton is
installed, and the reference otherwise.
"""
from __future__ import annotations

import os

import parallax
from parallax_kernels.workspace import workspace_step_ref

from .workspace import CWSWorkspace


def _fused_step():
    try:
        from parallax_kernels.workspace.fused import workspace_step_fused
    except ImportError as e:  # triton is an optional dependency
        raise parallax.ConfigError(
            f"model.workspace.type: the fused workspace needs triton ({e}); pip install 'parallax-cws[kernels]' "
            f"or use workspace.type: cws"
        ) from None
    return workspace_step_fused


class CWSFusedWorkspace(CWSWorkspace):
    class Config(CWSWorkspace.Config):
        type: str = "cws_fused"

    def __init__(self, cfg, d_model, info):
        super().__init__(cfg, d_model, info)
        self._step_fn = _fused_step()

    def step_fn(self, q):
        if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise parallax.ConfigError(
                "model.workspace.type: cws_fused runs on CUDA (or on CPU under TRITON_INTERPRET=1, slowly); "
                "use workspace.type: auto or cws"
            )
        return self._step_fn


class AutoWorkspace(CWSWorkspace):
    class Config(CWSWorkspace.Config):
        type: str = "auto"

    def step_fn(self, q):
        if q.is_cuda:
            try:
                return _fused_step()
            except parallax.ConfigError:
                return workspace_step_ref
        return workspace_step_ref


@parallax.hookimpl
def register_workspaces(register):
    register("cws_fused", CWSFusedWorkspace)
    register("auto", AutoWorkspace)
