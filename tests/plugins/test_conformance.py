"""Every built-in expert, encoder, decoder and workspace passes the kit plugin authors use.

The names come from the registry (built-in plugins only), so a new built-in is checked the day it
is registered. Each also runs with non-default options that change its code path.
"""
from __future__ import annotations

import pytest
import torch

import parallax
from parallax.registry import get_registry
from parallax.testing import (
    assert_decoder_conforms,
    assert_encoder_conforms,
    assert_expert_conforms,
    assert_workspace_conforms,
)

CHECK = {
    "experts": assert_expert_conforms,
    "encoders": assert_encoder_conforms,
    "decoders": assert_decoder_conforms,
    "workspaces": assert_workspace_conforms,
}

#: (kind, name) -> options beside the defaults
VARIANTS = {
    ("experts", "mamba_siso"): [{"slots": 1, "d_state": 3}],
    ("experts", "attention_probe"): [{"slots": 3, "heads": 2}, {"variant": "covariance", "block": 4}],
    ("experts", "memory_bank"): [{"slots": 1, "entries": 5, "init": "collapsed"}],
    # capacity 3 < seq 9 exercises eviction; one bit per table makes matches certain
    ("experts", "retrieval"): [{"slots": 3, "capacity": 3, "bits": 1, "tables": 1}],
    ("experts", "siren"): [{"layers": 3, "omega_0": 5.0}],
    ("encoders", "token"): [{"window": 1}, {"window": 4}],
    ("decoders", "motor"): [{"context": 5, "layers": 3, "heads": 2}, {"tie": False}],
    ("encoders", "image"): [{"patch": 1}],
    ("decoders", "classifier"): [{"pool": "last", "hidden": 0}],
    ("workspaces", "cws"): [{"init_h": "zeros", "learn_decay": False, "heads": 2}],
}


def cases():
    reg = get_registry()
    for kind in CHECK:
        for name in sorted(n for n, e in reg.entries[kind].items() if e.plugin.builtin):
            for options in [{}, *VARIANTS.get((kind, name), [])]:
                yield pytest.param(kind, name, options, id=f"{name}-{options}" if options else name)


#: (kind, name) -> keyword arguments for components of another modality than tokens
IMAGES = parallax.DataInfo(num_classes=3, input_shape=(1, 4, 4))
ARGS = {
    # images (B,C,H,W) -> 4 patches: no per-position inputs, so no causality or token-step checks
    ("encoders", "image"): {"info": IMAGES, "inputs": torch.randn(2, 1, 4, 4),
                            "skip": ("shapes", "causality", "incremental")},
    ("decoders", "classifier"): {"info": IMAGES},
}


@pytest.mark.parametrize("kind,name,options", list(cases()))
def test_builtin_component_conforms(kind, name, options):
    CHECK[kind](name, options, **ARGS.get((kind, name), {}))


def test_every_builtin_kind_has_a_component():
    assert {kind for kind, *_ in (p.values for p in cases())} == set(CHECK)
