"""The Explainer: one model's heatmaps by any method of the table (xray_ai.explain.base).

Every method maps one model-ready batch of size 1 to a 2-D float32 map in [0, 1] with no
NaN. The methods live with their families (`cam_family`: Grad-CAM, Grad-CAM++, HiResCAM,
LayerCAM, fusion, the model's default; `gradients`: saliency, SmoothGrad; `lime`: LIME); the
Explainer looks each up in the table and keeps, per model, what they share: the GradCam
passes (one per heatmap setting), the logit model and the compiled functions, so each is
built (and traced) once. `heatmap` is the model's default setting (its registry entry's),
which the method "default" shows.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from xray_ai.explain.base import Progress, method_spec
from xray_ai.explain.cam_math import HeatmapSpec
from xray_ai.explain.gradcam import GradCam, build_gradcam_model, find_target_layer

if TYPE_CHECKING:  # pragma: no cover
    import keras

__all__ = ["Explanation", "Explainer", "explainer_for"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Explanation:
    """heatmap: float32 2-D in [0, 1]; method: the map computed (for "default", the setting's
    own method, e.g. "layercam"); target_layer (None for input-space methods, "+"-joined for a
    fusion); flag: why the map is empty or degraded, else None; seconds: time it took."""

    heatmap: np.ndarray
    method: str
    target_layer: str | None
    flag: str | None
    seconds: float


class Explainer:
    """All methods for one model (the `MethodContext` the methods receive).

    Args:
        model: a keras model with one sigmoid output unit.
        smoothgrad_samples: noisy copies per SmoothGrad map (one batched call).
        smoothgrad_noise: noise standard deviation as a share of the input's value range.
        lime_samples: LIME's perturbation budget; lime_segments: SLIC superpixels.
        heatmap: the model's default setting (the registry entry's `heatmap`); None: last-layer Grad-CAM.
    """

    def __init__(self, model: keras.Model, *, smoothgrad_samples: int = 16, smoothgrad_noise: float = 0.15,
                 lime_samples: int = 300, lime_segments: int = 40, heatmap: HeatmapSpec | None = None):
        self.model = model
        self.heatmap = heatmap
        self.smoothgrad_samples = smoothgrad_samples
        self.smoothgrad_noise = smoothgrad_noise
        self.lime_samples = lime_samples
        self.lime_segments = lime_segments
        # Re-entrant: building a compiled function asks for the logit model, itself cached.
        self._lock = threading.RLock()
        self._cache: dict[str, Any] = {}

    def explain(self, x: np.ndarray, method: str, progress: Progress | None = None) -> Explanation:
        """One map for a model-ready batch `x` of shape (1, H, W, C).

        Raises:
            ValueError: unknown method (listing the valid ones) or a batch that is not of size 1.
        """
        spec = method_spec(method)
        x = np.asarray(x, np.float32)
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"x must be one model-ready batch of shape (1, H, W, C), got {x.shape}")
        start = time.perf_counter()
        out = spec.load()(self, x, progress)
        return Explanation(out.heatmap.astype(np.float32), out.method or method, out.target_layer, out.flag,
                           time.perf_counter() - start)

    # ------------------------------------------------------------------ what the methods share

    def cached(self, key: str, build: Callable[[], _T]) -> _T:
        """`build()` on the first call for `key`, the same object afterwards.

        Built under the lock, so two sessions asking at once still build (and trace) it once.
        """
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def grad_cam(self) -> GradCam:
        """The model's GradCam: Grad-CAM itself, and the target layer the CAM methods name."""
        return self.cached("gradcam", lambda: GradCam(self.model))

    def cam_for(self, spec: HeatmapSpec) -> GradCam:
        """A GradCam computing `spec` (one compiled pass per setting, built once)."""
        if spec.is_default:
            return self.grad_cam()
        return self.cached(f"cam:{spec.method}:{'+'.join(spec.layers)}", lambda: GradCam(self.model, heatmap=spec))

    def logit_model(self) -> keras.Model:
        """(features, logit, probability) model sharing the weights; see gradcam.py.

        Raises ValueError when the model has no 4-D layer (there is no feature map to replay to).
        """
        return self.cached("logit_model", lambda: build_gradcam_model(self.model, find_target_layer(self.model)))


_explainers: weakref.WeakKeyDictionary[keras.Model, Explainer] = weakref.WeakKeyDictionary()
_explainers_lock = threading.Lock()


def explainer_for(model: keras.Model, heatmap: HeatmapSpec | None = None) -> Explainer:
    """The Explainer of a loaded model, built once (its compiled functions are kept with it).

    heatmap: the model's default setting (its registry entry's `heatmap`), which the method
        "default" shows; given, it replaces the one recorded before (the compiled passes of
        each setting stay cached). None keeps what was recorded (last-layer Grad-CAM at first).
    """
    with _explainers_lock:
        explainer = _explainers.get(model)
        if explainer is None:
            explainer = _explainers[model] = Explainer(model, heatmap=heatmap)
        elif heatmap is not None:
            explainer.heatmap = heatmap
        return explainer
