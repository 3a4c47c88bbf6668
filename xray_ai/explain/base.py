"""The heatmap methods' table and protocol, what every Grad-CAM backend returns, and how a raw
map becomes a [0, 1] heatmap.

numpy only: the pages and the CLI read the method table before any model (or tensorflow) is
loaded, and the ONNX Runtime backend (xray_ai.serving.onnx_backend) shares the output type and
the normalisation with the TensorFlow one (xray_ai.explain.gradcam).

Adding a method: write its function (the `HeatmapMethod` protocol) in the module of its
family and add one `MethodSpec` row to `METHOD_TABLE`; the Explainer, the app's method
picker and the CLI's `--method` choices all read the table. Its first row, `DEFAULT_METHOD`,
is no method of its own: it stands for the model's default setting (the registry entry's
`heatmap`, chosen on validation; last-layer Grad-CAM where the entry has none).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "METHOD_NAMES",
    "METHOD_TABLE",
    "MethodSpec",
    "MethodContext",
    "MethodOutput",
    "HeatmapMethod",
    "Progress",
    "method_spec",
    "GradCamOutput",
    "normalise_map",
]

_EPS = 1e-7
_T = TypeVar("_T")

#: Called with the share of the work done, in [0, 1] (only LIME reports progress).
Progress = Callable[[float], None]


class MethodOutput(NamedTuple):
    """One method's map for one image: heatmap (h, w) in [0, 1] with no NaN; flag: why it is
    empty or degraded, else None; target_layer: the CAM methods' layer(s) ("+"-joined for a
    fusion), None for input-space ones; method: the map actually computed where it is not the
    method asked for (the model's default names its own), else None."""

    heatmap: np.ndarray
    flag: str | None
    target_layer: str | None = None
    method: str | None = None


class MethodContext(Protocol):
    """What a heatmap method may use of the model's Explainer (xray_ai.explain.methods.Explainer):
    the model, the methods' settings, and the pieces several methods share, built once per model."""

    model: Any
    smoothgrad_samples: int
    smoothgrad_noise: float
    lime_samples: int
    lime_segments: int
    #: The model's default heatmap setting (xray_ai.explain.cam_math.HeatmapSpec), or None.
    heatmap: Any

    def cached(self, key: str, build: Callable[[], _T]) -> _T:
        """`build()` on the first call for `key`, the same object afterwards (thread-safe)."""

    def grad_cam(self) -> Any:
        """The model's GradCam (xray_ai.explain.gradcam), built once."""

    def logit_model(self) -> Any:
        """The (features, logit, probability) replay of the model (gradcam.build_gradcam_model)."""

    def cam_for(self, spec: Any) -> Any:
        """A GradCam computing the HeatmapSpec `spec`, built once per setting."""


class HeatmapMethod(Protocol):
    """A heatmap method: one model-ready batch `x` of shape (1, H, W, C) -> its map."""

    def __call__(self, context: MethodContext, x: np.ndarray, progress: Progress | None) -> MethodOutput: ...


@dataclass(frozen=True)
class MethodSpec:
    """One row of the method table.

    id: what `--method`, the JSON and the PDF say; name: what the app's picker shows;
    implementation: "module:function" of its `HeatmapMethod`, imported on first use so
    that reading the table never imports tensorflow.
    """

    id: str
    name: str
    implementation: str

    def load(self) -> HeatmapMethod:
        module, _, function = self.implementation.partition(":")
        return getattr(importlib.import_module(module), function)


#: The method id that means "the model's default setting" (its registry `heatmap`).
DEFAULT_METHOD = "default"

# In the order the app and the CLI offer them; the model's default first: the picker's and
# `predict --method`'s default.
METHOD_TABLE: tuple[MethodSpec, ...] = (
    MethodSpec(DEFAULT_METHOD, "Model's default (chosen on validation)", "xray_ai.explain.cam_family:default_map"),
    MethodSpec("gradcam", "Grad-CAM (last layer)", "xray_ai.explain.cam_family:gradcam_map"),
    MethodSpec("gradcam++", "Grad-CAM++", "xray_ai.explain.cam_family:gradcam_pp_map"),
    MethodSpec("hirescam", "HiResCAM (stride-16 layer)", "xray_ai.explain.cam_family:hirescam_map"),
    MethodSpec("layercam", "LayerCAM (stride-16 layer)", "xray_ai.explain.cam_family:layercam_map"),
    MethodSpec("layercam-fusion", "LayerCAM, stride 16 + 8 fused", "xray_ai.explain.cam_family:layercam_fusion_map"),
    MethodSpec("saliency", "Gradient saliency", "xray_ai.explain.gradients:saliency_map"),
    MethodSpec("smoothgrad", "SmoothGrad", "xray_ai.explain.gradients:smoothgrad_map"),
    MethodSpec("lime", "LIME (slow: hundreds of model runs)", "xray_ai.explain.lime:lime_map"),
)

#: The method ids, in table order.
METHODS: tuple[str, ...] = tuple(spec.id for spec in METHOD_TABLE)
#: id -> the name the app shows (read-only).
METHOD_NAMES: Mapping[str, str] = MappingProxyType({spec.id: spec.name for spec in METHOD_TABLE})
_BY_ID = {spec.id: spec for spec in METHOD_TABLE}


def method_spec(method: str) -> MethodSpec:
    """The table row of a method id; ValueError listing the valid ones for any other."""
    try:
        return _BY_ID[method]
    except (KeyError, TypeError):  # TypeError: an unhashable value is no method either
        raise ValueError(f"unknown explanation method {method!r}; valid: {', '.join(METHODS)}") from None


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
    """probabilities (N,) in [0, 1]; heatmaps (N, h, w) in [0, 1] (at the finest layer's grid
    for a fusion); flags per image (None = fine); method: "gradcam", "hirescam", "layercam" or
    "none"; target_layer: the map's layer path ("+"-joined for a fusion); pooled_features: the
    last 4-D layer's feature map, globally averaged as the head pools it (N, K), for the input
    check (xray_ai.serving.input_check), whatever layers the map used; None where Grad-CAM was
    unavailable."""

    probabilities: np.ndarray
    heatmaps: np.ndarray
    flags: tuple[str | None, ...]
    method: str
    target_layer: str | None
    pooled_features: np.ndarray | None = None
