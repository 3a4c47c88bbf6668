"""Grad-CAM: target-layer search (nested models too), and probability + heatmap in one compiled pass.

How it works (Selvaraju et al. 2017): the gradient of the positive-class *logit* with
respect to the last spatial feature map A (N x h x w x K), averaged over space, weighs
the K channels; the ReLU of the weighted sum is the map. We differentiate the logit, not
the sigmoid output, because a confident sigmoid saturates and its gradient underflows to
zero (the "constant heatmap" users report for single-sigmoid heads).

Nested models (a backbone used as an inner keras.Model, or a Sequential) are handled by
*replaying* the model on fresh inputs, calling every layer as the original graph does but
capturing the target layer's output on the way. Wiring an inner layer's tensor to the
outer model's inputs instead is what raises keras' "graph disconnected" error.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

# The output type and the normalisation live in base: the ONNX Runtime backend shares them
# without importing keras.
from xray_ai.explain.base import GradCamOutput, normalise_map

__all__ = ["find_target_layer", "resolve_layer_path", "build_gradcam_model", "compute_gradcam", "GradCam"]

log = logging.getLogger(__name__)


def _is_container(layer: Any) -> bool:
    return isinstance(layer, keras.Model)


def _output_rank(layer: keras.layers.Layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # never called, or called more than once
        return None


def find_target_layer(model: keras.Model) -> str:
    """The layer Grad-CAM uses: the last one with a rank-4 (N, h, w, K) output.

    Layers are walked from the output backwards and nested models are searched
    recursively, so for a backbone wrapped as an inner model the answer is a
    `/`-joined path such as "densenet121/relu".

    Raises:
        ValueError: no layer has a 4-D output (naming the model).
    """
    path = _search(model)
    if path is None:
        raise ValueError(f"model {model.name!r} has no layer with a 4-D (N, h, w, K) output for Grad-CAM")
    return "/".join(path)


def _search(model: keras.Model) -> list[str] | None:
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if _is_container(layer):
            inner = _search(layer)
            if inner is not None:
                return [layer.name, *inner]
            continue
        if _output_rank(layer) == 4:
            return [layer.name]
    return None


def resolve_layer_path(model: keras.Model, path: str) -> list[keras.layers.Layer]:
    """The chain of layers a `/`-joined path (as `find_target_layer` gives) names, outermost
    first; ValueError quoting the bad part."""
    chain, current = [], model
    for part in path.split("/"):
        if not _is_container(current):
            raise ValueError(f"layer path {path!r}: {current.name!r} is not a model, cannot contain {part!r}")
        try:
            current = current.get_layer(part)
        except ValueError:
            names = ", ".join(layer.name for layer in current.layers[-8:])
            raise ValueError(f"layer path {path!r}: no layer {part!r} in {current.name!r} (last layers: {names})") from None
        chain.append(current)
    return chain


def _final_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer producing the model's output, descending into nested models."""
    layer = model.layers[-1]
    return _final_layer(layer) if _is_container(layer) else layer


def _is_sigmoid(layer: keras.layers.Layer) -> bool:
    activation = getattr(layer, "activation", None)
    return activation is not None and getattr(activation, "__name__", "") == "sigmoid"


class _Replay:
    """Rebuilds a model's graph on fresh inputs, capturing the target map and the logit.

    Each (nested) model is rebuilt as its own sub-model whose extra outputs are whatever
    was captured inside it; the enclosing graph then *calls* that sub-model, so every
    captured tensor belongs to the graph that finally uses it (no "graph disconnected").
    """

    def __init__(self, target_chain: list[keras.layers.Layer], final: keras.layers.Layer):
        self.target_chain = target_chain
        self.final = final
        self.captured: dict[str, Any] = {}

    def rebuild(self, model: keras.Model, depth: int) -> tuple[list[Any], Any, dict[str, Any]]:
        """-> (fresh inputs, output, tensors captured inside), all in one new graph."""
        outer, self.captured = self.captured, {}
        if isinstance(model, keras.Sequential):
            inputs = [keras.Input(shape=model.inputs[0].shape[1:])]
            x = inputs[0]
            for layer in model.layers:
                x = self.call(layer, depth, x)
            output = x
        else:
            clone = keras.models.clone_model(
                model,
                clone_function=lambda layer: layer,  # share layers and weights, do not copy
                call_function=lambda layer, *args, **kwargs: self.call(layer, depth, *args, **kwargs),
            )
            inputs, output = clone.inputs, clone.outputs[0]
        inner, self.captured = self.captured, outer
        return inputs, output, inner

    def call(self, layer: keras.layers.Layer, depth: int, *args: Any, **kwargs: Any) -> Any:
        on_path = depth < len(self.target_chain) and layer is self.target_chain[depth]
        leads_to_target = on_path and depth + 1 < len(self.target_chain)
        if leads_to_target or (_is_container(layer) and _contains(layer, self.final)):
            inputs, output, inner = self.rebuild(layer, depth + 1 if leads_to_target else len(self.target_chain))
            results = keras.Model(inputs, [output, *inner.values()])(*args)
            out = results[0]
            self.captured.update(zip(inner.keys(), results[1:]))
        else:
            out = layer(*args, **kwargs)
        if on_path and not leads_to_target:
            self.captured["features"] = out
        if layer is self.final:
            self.captured["logit"] = self._logit(layer, args[0], out)
        return out

    @staticmethod
    def _logit(layer: keras.layers.Layer, layer_input: Any, out: Any) -> Any:
        if isinstance(layer, keras.layers.Activation) and _is_sigmoid(layer):
            return layer_input
        if isinstance(layer, keras.layers.Dense) and _is_sigmoid(layer):
            # Same weights, no sigmoid: the pre-activation score.
            z = keras.ops.matmul(layer_input, layer.kernel)
            return z + layer.bias if layer.use_bias else z
        log.warning("output layer %r is not a sigmoid; Grad-CAM differentiates its output", layer.name)
        return out


def _contains(model: keras.Model, target: keras.layers.Layer) -> bool:
    return any(layer is target or (_is_container(layer) and _contains(layer, target)) for layer in model.layers)


def build_gradcam_model(model: keras.Model, target_layer: str) -> keras.Model:
    """A model with outputs (feature map, logit, probability) sharing `model`'s weights."""
    replay = _Replay(resolve_layer_path(model, target_layer), _final_layer(model))
    inputs, prob, captured = replay.rebuild(model, 0)
    if "features" not in captured or "logit" not in captured:
        raise ValueError(f"replaying {model.name!r} did not reach layer {target_layer!r} and the output")
    return keras.Model(inputs, [captured["features"], captured["logit"], prob], name=f"{model.name}_gradcam")


class GradCam:
    """Probability and Grad-CAM for a batch from one compiled forward + partial backward pass.

    Build once per loaded model (the ModelManager does, and warms it up); calls are
    thread-safe. When no gradient path exists (no 4-D layer, or a graph the replay cannot
    rebuild), it falls back to the plain forward pass: the probability still comes, with
    no map (all zeros), `method` "none", and every image flagged with the reason
    ("Grad-CAM unavailable: ...").
    """

    def __init__(self, model: keras.Model, target_layer: str | None = None):
        import tensorflow as tf  # only the compiled pass needs it: the layer search runs on any backend

        self.model = model
        self.method = "gradcam"
        self.fallback_reason: str | None = None
        self._lock = threading.Lock()
        try:
            self.target_layer: str | None = target_layer or find_target_layer(model)
            self._grad_model = build_gradcam_model(model, self.target_layer)
            self._fn = tf.function(self._gradcam_step, reduce_retracing=True)
        except ValueError as exc:
            log.warning("Grad-CAM unavailable for %s: %s", model.name, exc)
            self.method, self.fallback_reason = "none", f"Grad-CAM unavailable: {exc}"
            self.target_layer = None
            self._fn = tf.function(self._forward_step, reduce_retracing=True)

    def _gradcam_step(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)  # so the tape records the graph even when weights are frozen
            features, logit, prob = self._grad_model(x, training=False)
            score = tf.reduce_sum(logit)  # samples are independent: d(sum)/dA_i = d(logit_i)/dA_i
        grads = tape.gradient(score, features)
        if grads is None:
            grads = tf.zeros_like(features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # (N, 1, 1, K)
        cam = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))  # (N, h, w)
        return tf.reshape(prob, (-1,)), cam, tf.reduce_mean(features, axis=(1, 2))  # pooled, as the head pools

    def _forward_step(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, None]:
        import tensorflow as tf

        prob = self.model(x, training=False)
        return tf.reshape(prob, (-1,)), tf.zeros((tf.shape(x)[0], 1, 1)), None

    def __call__(self, batch: np.ndarray) -> GradCamOutput:
        """batch: float32 (N, H, W, C), model-ready. Returns GradCamOutput."""
        import tensorflow as tf

        x = tf.convert_to_tensor(batch, tf.float32)
        prob, cam, pooled = self._fn(x)
        prob = np.clip(np.nan_to_num(prob.numpy().astype(np.float64), nan=0.5), 0.0, 1.0)
        maps, flags = [], []
        for raw in cam.numpy():
            if self.method == "none":
                maps.append(np.zeros_like(raw, np.float32))
                flags.append(self.fallback_reason)
                continue
            norm, flag = normalise_map(raw)
            maps.append(norm)
            flags.append(flag)
        pooled = None if pooled is None else pooled.numpy()
        return GradCamOutput(prob, np.stack(maps), tuple(flags), self.method, self.target_layer, pooled)

    def warm_up(self) -> None:
        """Trace the compiled function once (batch of one) so the first real call is fast."""
        with self._lock:
            shape = (1, *self.model.inputs[0].shape[1:])
            self(np.zeros(shape, np.float32))


def compute_gradcam(model: keras.Model, x: np.ndarray, layer: str | None = None) -> np.ndarray:
    """Grad-CAM of one model-ready input batch of size 1.

    Args:
        model: a keras model with one sigmoid output unit (flat, nested or Sequential).
        x: float32 (1, H, W, C), already prepared for the model.
        layer: optional `/`-joined target layer path; found automatically if None.

    Returns:
        float32 2-D heatmap (h, w) at the target layer's resolution, in [0, 1], no NaN.
        All zeros when the gradient vanishes (see GradCam for the flag).
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one model-ready batch of shape (1, H, W, C), got {x.shape}")
    return GradCam(model, layer)(x).heatmaps[0]
