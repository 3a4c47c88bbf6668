"""Grad-CAM's public names where the API contract places them (they live in xray_ai.explain.gradcam)."""

from xray_ai.explain.gradcam import compute_gradcam, find_target_layer

__all__ = ["find_target_layer", "compute_gradcam"]
