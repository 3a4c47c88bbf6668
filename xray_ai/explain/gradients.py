"""Input-gradient methods: gradient saliency and SmoothGrad, maps at the input's resolution.

- saliency: |d logit / d x|, max over channels (Simonyan et al. 2014).
- smoothgrad: the mean of |d logit / d x| over noisy copies of the input (Smilkov et al.
  2017), all copies in one batched call.

Both differentiate the logit, as Grad-CAM does (see gradcam.py), through one compiled
function per model that they share.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from xray_ai.explain.base import MethodContext, MethodOutput, Progress, normalise_map

__all__ = ["saliency_map", "smoothgrad_map"]


def saliency_map(context: MethodContext, x: np.ndarray, progress: Progress | None = None) -> MethodOutput:
    """Gradient saliency of one model-ready batch of size 1."""
    cam, flag = normalise_map(_input_gradient(context)(tf.constant(x)).numpy()[0])
    return MethodOutput(cam, flag)


def smoothgrad_map(context: MethodContext, x: np.ndarray, progress: Progress | None = None) -> MethodOutput:
    """SmoothGrad of one model-ready batch of size 1: `context.smoothgrad_samples` copies with
    Gaussian noise of `context.smoothgrad_noise` times the input's value range."""
    rng = np.random.default_rng(0)  # deterministic maps for the same input
    sigma = context.smoothgrad_noise * float(x.max() - x.min() or 1.0)
    noisy = x + rng.normal(0.0, sigma, (context.smoothgrad_samples, *x.shape[1:])).astype(np.float32)
    grads = _input_gradient(context)(tf.constant(noisy)).numpy()  # (n, H, W)
    cam, flag = normalise_map(grads.mean(axis=0))
    return MethodOutput(cam, flag)


def _input_gradient(context: MethodContext) -> Callable[[tf.Tensor], tf.Tensor]:
    """The compiled x -> max over channels of |d logit / d x|, (N, H, W), built once per model."""
    return context.cached("fn:saliency", lambda: _compile_input_gradient(context.logit_model()))


def _compile_input_gradient(grad_model) -> Callable[[tf.Tensor], tf.Tensor]:
    def input_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)  # x is an input, not a variable: the tape must be told
            _, logit, _ = grad_model(x, training=False)
            score = tf.reduce_sum(logit)  # samples are independent: one backward pass for the batch
        grads = tape.gradient(score, x)
        return tf.reduce_max(tf.abs(grads), axis=-1)  # (N, H, W)

    return tf.function(input_gradient, reduce_retracing=True)
