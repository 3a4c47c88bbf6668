"""The CAM family: maps at a feature layer's resolution, from the gradient of the logit.

- gradcam: the GradCam pass of xray_ai.explain.gradcam (Selvaraju et al. 2017) at the last
  4-D layer, the same compiled pass that gives the probability.
- gradcam++: Grad-CAM with pixel-wise weights alpha = g^2 / (2 g^2 + sum(A) g^3) for the
  exponential of the logit (Chattopadhay et al. 2018), at the same layer.
- hirescam, layercam: HiResCAM (Draelos & Carin 2020) and LayerCAM (Jiang et al. 2021) at the
  last layer of output stride 16 (14 x 14 at 224 px), where the shipped models' maps point
  at the finding far more often than at stride 32 (models/README.md).
- layercam-fusion: LayerCAM at the last layers of stride 16 and 8, fused (cam_math.fuse_maps).
- default: the model's own setting, chosen on its validation split and kept in its registry
  entry (`heatmap`), last-layer Grad-CAM where the entry has none.

The arithmetic is xray_ai.explain.cam_math's (shared with the ONNX Runtime backend); every
map differentiates the logit, not the sigmoid, and names its layer(s).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from xray_ai.explain.base import MethodContext, MethodOutput, Progress, normalise_map
from xray_ai.explain.cam_math import HeatmapSpec

__all__ = ["gradcam_map", "gradcam_pp_map", "hirescam_map", "layercam_map", "layercam_fusion_map", "default_map",
           "stride_layers"]


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


def hirescam_map(context: MethodContext, x: np.ndarray, progress: Progress | None = None) -> MethodOutput:
    """HiResCAM at the last stride-16 layer (the last 4-D layer where there is none)."""
    return _spec_map(context, x, HeatmapSpec("hirescam", stride_layers(context, (16,))))


def layercam_map(context: MethodContext, x: np.ndarray, progress: Progress | None = None) -> MethodOutput:
    """LayerCAM at the last stride-16 layer (the last 4-D layer where there is none)."""
    return _spec_map(context, x, HeatmapSpec("layercam", stride_layers(context, (16,))))


def layercam_fusion_map(context: MethodContext, x: np.ndarray, progress: Progress | None = None) -> MethodOutput:
    """LayerCAM at the last layers of stride 16 and 8, fused at the stride-8 grid."""
    return _spec_map(context, x, HeatmapSpec("layercam", stride_layers(context, (16, 8))))


def default_map(context: MethodContext, x: np.ndarray, progress: Progress | None = None) -> MethodOutput:
    """The model's default setting (`context.heatmap`: its registry entry's), else last-layer Grad-CAM."""
    spec = context.heatmap or HeatmapSpec.default()
    if spec.is_default:
        return gradcam_map(context, x, progress)._replace(method="gradcam")
    out = _spec_map(context, x, spec)
    return out._replace(method="gradcam" if context.cam_for(spec).heatmap_problem else spec.method)


def stride_layers(context: MethodContext, strides: tuple[int, ...]) -> tuple[str, ...]:
    """The model's last layer of each of `strides` that it has (gradcam.layers_by_stride); the
    last 4-D layer when it has none of them (or its input size is not static)."""
    from xray_ai.explain.gradcam import find_target_layer, layers_by_stride  # keras

    def found() -> dict[int, str]:
        try:
            return layers_by_stride(context.model)
        except ValueError:
            return {}

    by_stride = context.cached("layers_by_stride", found)
    layers = tuple(by_stride[s] for s in strides if s in by_stride)
    return layers or (find_target_layer(context.model),)


def _spec_map(context: MethodContext, x: np.ndarray, spec: HeatmapSpec) -> MethodOutput:
    out = context.cam_for(spec)(x)
    return MethodOutput(out.heatmaps[0], out.flags[0], out.target_layer)


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
