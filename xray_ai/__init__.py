"""xray_ai: decision support for radiographs (probability, decision, Grad-CAM, report).

The few names a user of the library needs. Model-side names load tensorflow lazily,
so `import xray_ai` stays light for the imaging, overlay and report modules.
"""

from __future__ import annotations

from typing import Any

from xray_ai.images import ImageLoadError, XRay, load_image
from xray_ai.result import AnalysisResult, ViewResult
from xray_ai.version import __version__

__all__ = [
    "load_image",
    "XRay",
    "ImageLoadError",
    "ModelManager",
    "LoadedModel",
    "LoadedEnsemble",
    "analyze",
    "AnalysisResult",
    "ViewResult",
    "build_report",
]


_LAZY = {
    "ModelManager": ("serving.manager", "ModelManager"),
    "LoadedModel": ("serving.manager", "LoadedModel"),
    "LoadedEnsemble": ("serving.manager", "LoadedEnsemble"),
    "analyze": ("analysis", "analyze"),
    "build_report": ("outputs.report", "build_report"),
}


def __getattr__(name: str) -> Any:
    # Lazy so that `from xray_ai import load_image` never imports tensorflow.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'xray_ai' has no attribute {name!r}")
