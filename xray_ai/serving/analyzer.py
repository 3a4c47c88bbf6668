"""What a loaded model's analyzer is: the one interface the TensorFlow and ONNX Runtime backends share.

`xray_ai.explain.gradcam.GradCam` (TensorFlow) and `serving.onnx_backend.OnnxGradCam` (ONNX
Runtime) both satisfy it, structurally (neither inherits from it): ModelManager builds one
of them per model, and xray_ai.analysis calls it and reads its method and target layer.
numpy only.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from xray_ai.explain.base import GradCamOutput

__all__ = ["Analyzer"]


class Analyzer(Protocol):
    """Probability and heatmap for a model-ready batch; safe to call from several threads."""

    @property
    def method(self) -> str:
        """The heatmap method it computes: "gradcam", or "none" when Grad-CAM is unavailable."""
        ...

    @property
    def target_layer(self) -> str | None:
        """`/`-joined path of the layer the heatmap is taken at; None when there is none."""
        ...

    @property
    def fallback_reason(self) -> str | None:
        """Why there is no Grad-CAM (`method` "none"); None otherwise."""
        ...

    def __call__(self, batch: np.ndarray) -> GradCamOutput:
        """batch: float32 (N, H, W, C), model-ready."""
        ...

    def warm_up(self) -> None:
        """One call on a dummy batch, so that the first real analysis pays no set-up cost."""
        ...
