"""More explanations than Grad-CAM: gradient saliency, SmoothGrad, Grad-CAM++ and LIME.

Every method maps one model-ready batch of size 1 to a 2-D float32 map in [0, 1] with no
NaN. Gradient methods differentiate the logit (as Grad-CAM does, see gradcam.py) and run
compiled (`tf.function`), built once per model and method; LIME is model-agnostic and
costs `num_samples` forward passes.

- saliency: |d logit / d x|, max over channels (Simonyan et al. 2014); input resolution.
- smoothgrad: the mean of |d logit / d x| over noisy copies of the input (Smilkov et al.
  2017); input resolution.
- gradcam++: Grad-CAM with pixel-wise weights alpha = g^2 / (2 g^2 + sum(A) g^3) for the
  exponential of the logit (Chattopadhay et al. 2018); feature-map resolution.
- lime: a linear surrogate over SLIC superpixels switched off to the image mean (Ribeiro
  et al. 2016, the `lime` package); input resolution.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from xray_ai.explain.base import METHODS, normalise_map
from xray_ai.explain.gradcam import GradCam, build_gradcam_model, find_target_layer

__all__ = ["METHODS", "Explanation", "Explainer", "explainer_for"]


@dataclass(frozen=True)
class Explanation:
    """heatmap: float32 2-D in [0, 1]; method; target_layer (None for input-space methods);
    flag: why the map is empty or degraded, else None; seconds: time it took."""

    heatmap: np.ndarray
    method: str
    target_layer: str | None
    flag: str | None
    seconds: float


class Explainer:
    """All methods for one model; compiled functions are built on first use and kept.

    Args:
        model: a keras model with one sigmoid output unit.
        smoothgrad_samples: noisy copies per SmoothGrad map (one batched call).
        smoothgrad_noise: noise standard deviation as a share of the input's value range.
        lime_samples: LIME's perturbation budget; lime_segments: SLIC superpixels.
    """

    def __init__(self, model: keras.Model, *, smoothgrad_samples: int = 16, smoothgrad_noise: float = 0.15,
                 lime_samples: int = 300, lime_segments: int = 40):
        self.model = model
        self.smoothgrad_samples = smoothgrad_samples
        self.smoothgrad_noise = smoothgrad_noise
        self.lime_samples = lime_samples
        self.lime_segments = lime_segments
        self._lock = threading.Lock()
        self._gradcam: GradCam | None = None
        self._logit_model: keras.Model | None = None
        self._fns: dict[str, Callable] = {}

    # ------------------------------------------------------------------ public

    def explain(self, x: np.ndarray, method: str, progress: Callable[[float], None] | None = None) -> Explanation:
        """One map for a model-ready batch `x` of shape (1, H, W, C).

        Raises:
            ValueError: unknown method (listing the valid ones) or a batch that is not of size 1.
        """
        if method not in METHODS:
            raise ValueError(f"unknown explanation method {method!r}; valid: {', '.join(METHODS)}")
        x = np.asarray(x, np.float32)
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"x must be one model-ready batch of shape (1, H, W, C), got {x.shape}")
        start = time.perf_counter()
        layer = None
        if method == "gradcam":
            out = self._get_gradcam()(x)
            cam, flag, layer = out.heatmaps[0], out.flags[0], out.target_layer
        elif method == "gradcam++":
            layer = self._get_gradcam().target_layer
            cam, flag = normalise_map(self._compiled("gradcam++")(tf.constant(x)).numpy()[0])
        elif method == "saliency":
            cam, flag = normalise_map(self._compiled("saliency")(tf.constant(x)).numpy()[0])
        elif method == "smoothgrad":
            cam, flag = normalise_map(self._smoothgrad(x))
        else:
            cam, flag = normalise_map(self._lime(x, progress))
        return Explanation(cam.astype(np.float32), method, layer, flag, time.perf_counter() - start)

    # ------------------------------------------------------------------ gradient methods

    def _get_gradcam(self) -> GradCam:
        with self._lock:
            if self._gradcam is None:
                self._gradcam = GradCam(self.model)
            return self._gradcam

    def _logits(self) -> keras.Model:
        """(features, logit, probability) model sharing the weights; see gradcam.py."""
        with self._lock:
            if self._logit_model is None:
                self._logit_model = build_gradcam_model(self.model, find_target_layer(self.model))
            return self._logit_model

    def _compiled(self, name: str) -> Callable:
        with self._lock:
            if name in self._fns:
                return self._fns[name]
        grad_model = self._logits()

        def input_gradient(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                _, logit, _ = grad_model(x, training=False)
                score = tf.reduce_sum(logit)
            grads = tape.gradient(score, x)
            return tf.reduce_max(tf.abs(grads), axis=-1)  # (N, H, W)

        def gradcam_pp(x):
            with tf.GradientTape() as tape:
                features, logit, _ = grad_model(x, training=False)
                score = tf.reduce_sum(logit)
            g = tape.gradient(score, features)
            # For S = exp(logit) the higher derivatives are powers of the first (paper, eq. 19).
            g2, g3 = g * g, g * g * g
            denom = 2.0 * g2 + tf.reduce_sum(features, axis=(1, 2), keepdims=True) * g3
            alpha = tf.math.divide_no_nan(g2, denom)
            weights = tf.reduce_sum(alpha * tf.nn.relu(g), axis=(1, 2), keepdims=True)
            return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))

        fn = tf.function(gradcam_pp if name == "gradcam++" else input_gradient, reduce_retracing=True)
        with self._lock:
            self._fns.setdefault(name, fn)
            return self._fns[name]

    def _smoothgrad(self, x: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(0)  # deterministic maps for the same input
        sigma = self.smoothgrad_noise * float(x.max() - x.min() or 1.0)
        noisy = x + rng.normal(0.0, sigma, (self.smoothgrad_samples, *x.shape[1:])).astype(np.float32)
        grads = self._compiled("saliency")(tf.constant(noisy)).numpy()  # (n, H, W)
        return grads.mean(axis=0)

    # ------------------------------------------------------------------ LIME

    def _lime(self, x: np.ndarray, progress: Callable[[float], None] | None) -> np.ndarray:
        from lime import lime_image
        from lime.wrappers.scikit_image import SegmentationAlgorithm

        image = x[0].astype(np.float64)
        rgb = image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)
        done = [0]
        batch_size = 50

        def classify(batch: np.ndarray) -> np.ndarray:
            batch = batch[..., : x.shape[-1]].astype(np.float32)
            p = self.model(batch, training=False).numpy().reshape(-1)
            done[0] += len(batch)
            if progress:
                progress(min(1.0, done[0] / self.lime_samples))
            return np.stack([1.0 - p, p], axis=1)

        segmenter = SegmentationAlgorithm("slic", n_segments=self.lime_segments, compactness=10.0,
                                          sigma=1.0, start_label=0, channel_axis=-1)
        explanation = lime_image.LimeImageExplainer(random_state=0).explain_instance(
            rgb, classify, labels=(1,), top_labels=None, hide_color=float(rgb.mean()),
            num_samples=self.lime_samples, batch_size=batch_size, segmentation_fn=segmenter, random_seed=0,
        )
        segments = explanation.segments
        heat = np.zeros(segments.shape, np.float32)
        for segment, weight in explanation.local_exp[1]:
            heat[segments == segment] = max(weight, 0.0)  # evidence for the positive label only
        return heat


_explainers: "weakref.WeakKeyDictionary[keras.Model, Explainer]" = weakref.WeakKeyDictionary()
_explainers_lock = threading.Lock()


def explainer_for(model: keras.Model) -> Explainer:
    """The Explainer of a loaded model, built once (its compiled functions are kept with it)."""
    with _explainers_lock:
        explainer = _explainers.get(model)
        if explainer is None:
            explainer = _explainers[model] = Explainer(model)
        return explainer
