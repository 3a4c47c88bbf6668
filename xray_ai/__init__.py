"""xray_ai: decision support for radiographs (probability, decision, Grad-CAM, report).

The few names a user of the library needs. Model-side names load tensorflow lazily,
so `import xray_ai` stays light for the imaging, overlay and report modules.
"""

from __future__ import annotations

from typing import Any

from .imaging import ImageLoadError, XRay, load_image
from .result import AnalysisResult, ViewResult

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

__version__ = "0.1.0"

_LAZY = {
    "ModelManager": ("manager", "ModelManager"),
    "LoadedModel": ("manager", "LoadedModel"),
    "LoadedEnsemble": ("manager", "LoadedEnsemble"),
    "analyze": ("analysis", "analyze"),
    "build_report": ("report", "build_report"),
}


def __getattr__(name: str) -> Any:
    # Lazy so that `from xray_ai import load_image` never imports tensorflow.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'xray_ai' has no attribute {name!r}")
