"""Serving settings read from the environment: which backend computes results, where ONNX
exports are cached, how many threads ONNX Runtime may use.

Read on every call, not at import, so that a test (or a process that sets the variables
late) sees its own values. Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BACKENDS", "BACKEND_ENV", "CACHE_ENV", "default_backend", "cache_dir", "session_threads"]

BACKENDS = ("auto", "onnx", "tensorflow")
BACKEND_ENV = "XRAY_AI_BACKEND"
CACHE_ENV = "XRAY_AI_ONNX_CACHE"


def default_backend() -> str:
    """`$XRAY_AI_BACKEND` (auto | onnx | tensorflow), default "auto". ValueError for another value."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


def cache_dir() -> Path:
    """`$XRAY_AI_ONNX_CACHE`, else `$XDG_CACHE_HOME/xray_ai/onnx`, else `~/.cache/xray_ai/onnx`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xray_ai" / "onnx"


def session_threads() -> int:
    """Cores this process may use: ONNX Runtime's intra-op threads (one run fills the machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
