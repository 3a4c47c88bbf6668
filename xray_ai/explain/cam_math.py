"""The CAM family's arithmetic, shared by both backends: what a heatmap setting is, one layer's
map from its feature map and gradient, and how several layers' maps are fused.

numpy only, so that the TensorFlow analyzer (xray_ai.explain.gradcam), the ONNX Runtime
backend (xray_ai.serving) and the registry (which stores a model's default as a `heatmap`
field) agree on one definition without importing keras.

Every map differentiates the positive-class *logit* (not the saturating sigmoid). With A the
feature map of a layer (N, h, w, K) and g = d logit / d A of the same shape:

- Grad-CAM (Selvaraju et al. 2017): ReLU(sum_k A_k * mean_ij g_k): one weight per channel.
- HiResCAM (Draelos & Carin 2020): ReLU(sum_k A_k * g_k): the element-wise product, so the
  map shows what the gradient weighs at each position, not a spatial average of it.
- LayerCAM (Jiang et al. 2021): ReLU(sum_k A_k * ReLU(g_k)): positive gradients only, per
  position; meant for earlier, finer layers (for a ReLU layer, A >= 0 and the outer ReLU
  changes nothing).

Several layers (fusion, as pytorch-grad-cam does for several target layers, and as LayerCAM
fuses stages): each layer's map is scaled to [0, 1] by its own min and max, resized
bilinearly to the finest layer's grid, and the maps are averaged. `combine` returns that raw
map; `xray_ai.explain.base.normalise_map` turns it into the [0, 1] heatmap shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CAM_METHODS",
    "HeatmapSpec",
    "layer_map",
    "combine",
    "fuse_maps",
    "resize_bilinear",
    "cost_rank",
]

#: The CAM methods a heatmap setting may name, cheapest first (the tie-break of a choice).
CAM_METHODS: tuple[str, ...] = ("gradcam", "hirescam", "layercam")
_EPS = 1e-7
# The registry field's keys that say what the map is; every other key is provenance, kept as is.
_MAP_KEYS = ("method", "layers", "contour_level")


@dataclass(frozen=True)
class HeatmapSpec:
    """Which map a model shows by default: a CAM method at one layer, or several (fusion).

    Attributes:
        method: one of CAM_METHODS ("gradcam", "hirescam", "layercam").
        layers: `/`-joined layer paths (the syntax of gradcam.find_target_layer); one layer,
            or several for a fusion. Empty: the last 4-D layer, found by find_target_layer
            (`HeatmapSpec.default()`, last-layer Grad-CAM, what an entry without the field gets).
        contour_level: the share of the map's peak at which the overlay cuts the hot region
            (chosen on validation; None: the overlay's own default).
        provenance: the registry field's other keys (chosen_on, pointing_game, ...), kept
            verbatim so that a save never drops them.

    Two settings are equal when they give the same map: method and layers only.
    """

    method: str
    layers: tuple[str, ...] = ()
    contour_level: float | None = field(default=None, compare=False, hash=False)
    provenance: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.method not in CAM_METHODS:
            raise ValueError(f"heatmap method {self.method!r} is not one of {', '.join(CAM_METHODS)}")
        layers = self.layers
        if isinstance(layers, str) or not all(isinstance(p, str) and p.strip() and p == p.strip() for p in layers):
            raise ValueError(f"heatmap layers must be a list of layer paths (e.g. 'block_13_expand_relu' or "
                             f"'densenet121/relu'), got {layers!r}")
        if any("" in p.split("/") for p in layers):
            raise ValueError(f"heatmap layers: an empty part in a '/'-joined path: {list(layers)!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"heatmap layers name a layer twice: {list(layers)!r}")
        if self.contour_level is not None and (isinstance(self.contour_level, bool)
                                               or not 0.0 < float(self.contour_level) <= 1.0):
            raise ValueError(f"heatmap contour_level must be a number in (0, 1], got {self.contour_level!r}")
        object.__setattr__(self, "layers", tuple(layers))
        object.__setattr__(self, "provenance", dict(self.provenance))  # a copy: the caller's dict may change

    @classmethod
    def default(cls) -> HeatmapSpec:
        """Last-layer Grad-CAM: the layer gradcam.find_target_layer finds (today's map)."""
        return cls("gradcam", ())

    @property
    def is_default(self) -> bool:
        """True for last-layer Grad-CAM at the automatically found layer."""
        return self.method == "gradcam" and not self.layers

    @property
    def label(self) -> str:
        """A short name for tables and logs: "layercam at block_13_expand_relu", "layercam fusion of a + b"."""
        if not self.layers:
            return f"{self.method} at the last layer"
        if len(self.layers) == 1:
            return f"{self.method} at {self.layers[0]}"
        return f"{self.method} fusion of {' + '.join(self.layers)}"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HeatmapSpec:
        """The registry's `heatmap` object -> HeatmapSpec; ValueError naming the bad key.

        `method` is required; `layers` a list of paths (absent or empty: the last layer);
        `contour_level` optional; every other key is kept as provenance.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"heatmap must be an object, got {type(d).__name__}")
        if "method" not in d:
            raise ValueError("heatmap.method: missing")
        layers = d.get("layers", [])
        if not isinstance(layers, (list, tuple)):
            raise ValueError(f"heatmap.layers: must be a list of layer paths, got {layers!r}")
        level = d.get("contour_level")
        if level is not None and (isinstance(level, bool) or not isinstance(level, (int, float))):
            raise ValueError(f"heatmap.contour_level: must be a number in (0, 1], got {level!r}")
        method = d["method"]
        if not isinstance(method, str):
            raise ValueError(f"heatmap.method: must be one of {', '.join(CAM_METHODS)}, got {method!r}")
        return cls(method, tuple(layers), None if level is None else float(level),
                   {k: v for k, v in d.items() if k not in _MAP_KEYS})

    def to_json(self) -> dict[str, Any]:
        """The registry's `heatmap` object (method, layers, contour_level if set, then provenance)."""
        out: dict[str, Any] = {"method": self.method, "layers": list(self.layers)}
        if self.contour_level is not None:
            out["contour_level"] = self.contour_level
        out.update(self.provenance)
        return out


def _check_pair(features: np.ndarray, gradients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(features, np.float32)
    g = np.asarray(gradients, np.float32)
    if a.ndim != 4 or a.shape != g.shape:
        raise ValueError(f"features and gradients must both be (N, h, w, K); got {a.shape} and {g.shape}")
    return a, g


def layer_map(method: str, features: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """One layer's raw CAM.

    Args:
        method: one of CAM_METHODS.
        features: the layer's output A, float32 (N, h, w, K).
        gradients: d logit / d A, float32 (N, h, w, K) (the logit, not the probability).

    Returns:
        float32 (N, h, w), >= 0 (not yet scaled: see base.normalise_map).
    """
    a, g = _check_pair(features, gradients)
    if method == "gradcam":
        cam = np.sum(a * g.mean(axis=(1, 2), keepdims=True), axis=-1)
    elif method == "hirescam":
        cam = np.sum(a * g, axis=-1)
    elif method == "layercam":
        cam = np.sum(a * np.maximum(g, 0.0), axis=-1)
    else:
        raise ValueError(f"unknown CAM method {method!r}; valid: {', '.join(CAM_METHODS)}")
    return np.maximum(cam, 0.0).astype(np.float32)


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (N, h, w) maps to (N, H, W), pixel centres aligned, edges clamped:
    what cv2.resize(..., INTER_LINEAR) computes (without its fixed-point rounding)."""
    maps = np.asarray(maps, np.float32)
    height, width = size
    if maps.shape[1:] == (height, width):
        return maps

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centre = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        centre = np.clip(centre, 0.0, n_in - 1)
        lo = np.floor(centre).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (centre - lo).astype(np.float32)

    r0, r1, fr = axis(maps.shape[1], height)
    c0, c1, fc = axis(maps.shape[2], width)
    rows = maps[:, r0, :] * (1.0 - fr)[None, :, None] + maps[:, r1, :] * fr[None, :, None]
    return (rows[:, :, c0] * (1.0 - fc) + rows[:, :, c1] * fc).astype(np.float32)


def fuse_maps(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Several layers' raw maps (each (N, h_i, w_i)) -> one raw map at the finest grid.

    One map is returned unchanged. Several: each is scaled per image to [0, 1] by its own
    min and max (pytorch-grad-cam's scale_cam_image), resized bilinearly to the largest
    (h, w) among them, and the maps are averaged (its aggregate_multi_layers).
    """
    if not maps:
        raise ValueError("no layer maps to fuse")
    maps = [np.asarray(m, np.float32) for m in maps]
    if len(maps) == 1:
        return maps[0]
    size = max(m.shape[1] for m in maps), max(m.shape[2] for m in maps)
    scaled = []
    for m in maps:
        m = np.maximum(m, 0.0)
        low = m.min(axis=(1, 2), keepdims=True)
        m = (m - low) / (m.max(axis=(1, 2), keepdims=True) - low + _EPS)
        scaled.append(resize_bilinear(m, size))
    return np.mean(scaled, axis=0).astype(np.float32)


def combine(spec: HeatmapSpec, features: list[np.ndarray], gradients: list[np.ndarray]) -> np.ndarray:
    """The raw map of a heatmap setting from its layers' feature maps and logit gradients.

    Args:
        spec: the setting; `features[i]` and `gradients[i]` belong to `spec.layers[i]` (for
            `HeatmapSpec.default()`, one pair at the last 4-D layer).
        features, gradients: float32 (N, h_i, w_i, K_i) each, gradients of the logit.

    Returns:
        float32 (N, H, W) at the finest layer's grid, >= 0; with one layer exactly
        `layer_map(spec.method, features[0], gradients[0])`. Scale it with base.normalise_map.
    """
    expected = max(1, len(spec.layers))
    if len(features) != expected or len(gradients) != expected:
        raise ValueError(f"{spec.label}: expected {expected} feature maps and gradients, "
                         f"got {len(features)} and {len(gradients)}")
    return fuse_maps([layer_map(spec.method, a, g) for a, g in zip(features, gradients)])


def cost_rank(spec: HeatmapSpec, strides: Mapping[str, int]) -> tuple[int, int, int]:
    """Sort key, cheapest first: the finest layer's stride, coarse first (the backward pass
    stops earlier), then fewer layers, then CAM_METHODS order. `strides`: layer path -> stride."""
    finest = min((strides.get(p, 0) for p in spec.layers), default=max(strides.values(), default=0))
    return (-finest, len(spec.layers), CAM_METHODS.index(spec.method))
