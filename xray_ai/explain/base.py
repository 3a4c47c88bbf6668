"""What every Grad-CAM backend returns, and how a raw map becomes a [0, 1] heatmap.

Kept free of tensorflow so that the ONNX Runtime backend (xray_ai.onnx_backend) and the
TensorFlow one (xray_ai.gradcam) share one output type and one normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["METHODS", "GradCamOutput", "normalise_map"]

# Heatmap methods, in the order the app and the CLI offer them (xray_ai.explain computes them).
METHODS = ("gradcam", "gradcam++", "saliency", "smoothgrad", "lime")

_EPS = 1e-7


def normalise_map(cam: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Scale a non-negative map to [0, 1] by its max; an all-zero map stays zero and is flagged.
    Negative values become 0 (Grad-CAM's ReLU); NaN and infinities become 0."""
    cam = np.asarray(cam, np.float32)
    peak = float(cam.max()) if cam.size else 0.0
    if not math.isfinite(peak):  # NaN or inf somewhere: the slow path; otherwise 2 numpy calls
        cam = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(cam.max()) if cam.size else 0.0
    if peak <= _EPS:
        return np.zeros_like(cam), "zero gradient: the map is empty"
    scaled = np.maximum(cam, 0.0)
    scaled /= np.float32(peak + _EPS)
    return scaled, None


@dataclass(frozen=True)
class GradCamOutput:
    """probabilities (N,) in [0, 1]; heatmaps (N, h, w) in [0, 1]; flags per image (None = fine);
    pooled_features: the target layer's feature map, globally averaged as the head pools it
    (N, K), for the input check (xray_ai.input_check); None where Grad-CAM was unavailable."""

    probabilities: np.ndarray
    heatmaps: np.ndarray
    flags: tuple[str | None, ...]
    method: str
    target_layer: str | None
    pooled_features: np.ndarray | None = None
