"""The CAM family: Grad-CAM and Grad-CAM++, maps at the target layer's resolution.

- gradcam: the GradCam pass of xray_ai.explain.gradcam (Selvaraju et al. 2017), the same
  compiled pass that gives the probability.
- gradcam++: Grad-CAM with pixel-wise weights alpha = g^2 / (2 g^2 + sum(A) g^3) for the
  exponential of the logit (Chattopadhay et al. 2018).

Both differentiate the logit, not the sigmoid (see gradcam.py), and name their layer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from xray_ai.explain.base import MethodContext, MethodOutput, Progress, normalise_map

__all__ = ["gradcam_map", "gradcam_pp_map"]


def gradcam_map(context: MethodContext, x: np.ndarray, progress: Progress | None = None) -> MethodOutput:
    """Grad-CAM of one model-ready batch of size 1; GradCam's own flag (e.g. its fallback) kept."""
    out = context.grad_cam()(x)
    return MethodOutput(out.heatmaps[0], out.flags[0], out.target_layer)


def gradcam_pp_map(context: MethodContext, x: np.ndarray, progress: Progress | None = None) -> MethodOutput:
    """Grad-CAM++ of one model-ready batch of size 1, at the layer Grad-CAM uses."""
    layer = context.grad_cam().target_layer
    fn = context.cached("fn:gradcam++", lambda: _compile_gradcam_pp(context.logit_model()))
    cam, flag = normalise_map(fn(tf.constant(x)).numpy()[0])
    return MethodOutput(cam, flag, layer)


def _compile_gradcam_pp(grad_model) -> Callable[[tf.Tensor], tf.Tensor]:
    def gradcam_pp(x):
        with tf.GradientTape() as tape:
            features, logit, _ = grad_model(x, training=False)
            score = tf.reduce_sum(logit)  # samples are independent: d(sum)/dA_i = d(logit_i)/dA_i
        g = tape.gradient(score, features)
        # For S = exp(logit) the higher derivatives are powers of the first (paper, eq. 19).
        g2, g3 = g * g, g * g * g
        denom = 2.0 * g2 + tf.reduce_sum(features, axis=(1, 2), keepdims=True) * g3
        alpha = tf.math.divide_no_nan(g2, denom)
        weights = tf.reduce_sum(alpha * tf.nn.relu(g), axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))

    return tf.function(gradcam_pp, reduce_retracing=True)
