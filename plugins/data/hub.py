"""Opening a Hugging Face ``datasets`` data set, failing fast and in one line when the hub is out of reach.

``datasets`` is imported here, lazily, so that the core and the other data sources never pay for
it. Before streaming from the hub, ``open_dataset`` checks that the hub can be reached at all: with
``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set, or when a TCP connection to the endpoint does not
open within a few seconds, it raises a ``ConfigError`` that names the offline alternative, instead
of letting the client retry for minutes. A local data set folder skips the check.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import parallax

CONNECT_TIMEOUT_S = 5.0


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def check_reachable(what: str, offline_fix: str) -> None:
    """Raise a one-line ``ConfigError`` when the hub cannot be reached; ``offline_fix`` says what to do instead."""
    if _truthy("HF_HUB_OFFLINE") or _truthy("HF_DATASETS_OFFLINE"):
        raise parallax.ConfigError(f"{what}: the Hugging Face hub is offline (HF_HUB_OFFLINE is set); {offline_fix}")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise parallax.ConfigError(f"{what}: cannot reach the Hugging Face hub at {host}:{port} ({reason}); "
                                   f"{offline_fix}") from None


def open_dataset(name: str, split: str, what: str, offline_fix: str, streaming: bool = True):
    """``datasets.load_dataset(name, split=split, streaming=...)``; ``name`` is a hub id or a local folder."""
    if not Path(name).is_dir():
        check_reachable(what, offline_fix)
    # a hub that answers the probe but stalls later should still fail in seconds, not minutes
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        import datasets
    except ImportError:
        raise parallax.ConfigError(f"{what}: needs the `datasets` package; pip install 'parallax-cws[text]'") from None
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(name, split=split, streaming=streaming)
    except Exception as e:  # the client raises many types (connection, missing split, bad repo id)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise parallax.ConfigError(f"{what}: cannot load '{name}' split '{split}' ({first}); {offline_fix}") from None
