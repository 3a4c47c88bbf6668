"""Grad-CAM and its family in one compiled pass with the probability; the replay that reaches
any layer of a nested model.

How it works (Selvaraju et al. 2017): the gradient of the positive-class *logit* with
respect to a spatial feature map A (N x h x w x K), averaged over space, weighs the K
channels; the ReLU of the weighted sum is the map. We differentiate the logit, not the
sigmoid output, because a confident sigmoid saturates and its gradient underflows to zero
(the "constant heatmap" users report for single-sigmoid heads). HiResCAM and LayerCAM use
the same gradient position by position, and several layers can be fused
(xray_ai.explain.cam_math holds the arithmetic, shared with the ONNX Runtime backend).

Nested models (a backbone used as an inner keras.Model, or a Sequential) are handled by
*replaying* the model on fresh inputs, calling every layer as the original graph does but
capturing the wanted layers' outputs on the way. Wiring an inner layer's tensor to the
outer model's inputs instead is what raises keras' "graph disconnected" error.

The layer search (find_target_layer, layers_by_stride, resolve_layer_path) lives in
xray_ai.explain.layers and is re-exported here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

# The output type and the normalisation live in base, the CAM arithmetic in cam_math: the
# ONNX Runtime backend shares them without importing keras.
from xray_ai.explain.base import GradCamOutput, normalise_map
from xray_ai.explain.cam_math import HeatmapSpec, fuse_maps
from xray_ai.explain.layers import (final_layer, find_target_layer, is_container, layers_by_stride, output_rank,
                                    resolve_layer_path)

__all__ = ["find_target_layer", "resolve_layer_path", "layers_by_stride", "build_gradcam_model",
           "build_feature_gradient_model", "tf_layer_map", "compute_gradcam", "GradCam"]

log = logging.getLogger(__name__)


def _is_sigmoid(layer: keras.layers.Layer) -> bool:
    activation = getattr(layer, "activation", None)
    return activation is not None and getattr(activation, "__name__", "") == "sigmoid"


class _Replay:
    """Rebuilds a model's graph on fresh inputs, capturing the wanted layers' maps and the logit.

    `chains[i]` is the chain of layers (outermost first) that leads to wanted layer i; its
    output is captured under the key i, the logit under "logit". Each (nested) model on the
    way to a wanted layer or to the output is rebuilt as its own sub-model whose extra
    outputs are whatever was captured inside it; the enclosing graph then *calls* that
    sub-model, so every captured tensor belongs to the graph that finally uses it (no
    "graph disconnected").
    """

    def __init__(self, chains: list[list[keras.layers.Layer]], final: keras.layers.Layer):
        self.chains = chains
        self.final = final
        self.captured: dict[Any, Any] = {}

    def rebuild(self, model: keras.Model, depth: int, active: list[int]) -> tuple[list[Any], Any, dict[Any, Any]]:
        """-> (fresh inputs, output, tensors captured inside), all in one new graph. `active`:
        the chains that pass through `model`, whose layer at `depth` lies inside it."""
        outer, self.captured = self.captured, {}
        if isinstance(model, keras.Sequential):
            inputs = [keras.Input(shape=model.inputs[0].shape[1:])]
            x = inputs[0]
            for layer in model.layers:
                x = self.call(layer, depth, active, x)
            output = x
        else:
            clone = keras.models.clone_model(
                model,
                clone_function=lambda layer: layer,  # share layers and weights, do not copy
                call_function=lambda layer, *args, **kwargs: self.call(layer, depth, active, *args, **kwargs),
            )
            inputs, output = clone.inputs, clone.outputs[0]
        inner, self.captured = self.captured, outer
        return inputs, output, inner

    def call(self, layer: keras.layers.Layer, depth: int, active: list[int], *args: Any, **kwargs: Any) -> Any:
        here = [i for i in active if self.chains[i][depth] is layer]
        deeper = [i for i in here if len(self.chains[i]) > depth + 1]
        if deeper or (is_container(layer) and _contains(layer, self.final)):
            inputs, output, inner = self.rebuild(layer, depth + 1, deeper)
            results = keras.Model(inputs, [output, *inner.values()])(*args)
            out = results[0]
            self.captured.update(zip(inner.keys(), results[1:]))
        else:
            out = layer(*args, **kwargs)
        for i in here:
            if len(self.chains[i]) == depth + 1:
                self.captured[i] = out
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
    return any(layer is target or (is_container(layer) and _contains(layer, target)) for layer in model.layers)


def build_feature_gradient_model(model: keras.Model, layers: Sequence[str]) -> keras.Model:
    """A model with outputs [feature_1, ..., feature_n, logit, probability] sharing `model`'s weights.

    Args:
        model: a keras model with one sigmoid output unit (flat, nested or Sequential).
        layers: `/`-joined paths (find_target_layer / layers_by_stride syntax) of 4-D layers.

    Returns:
        keras.Model on fresh inputs of `model`'s input shape: feature_i is layer i's output
        (N, h_i, w_i, K_i) as the model computes it, logit the sigmoid's input (N, 1),
        probability the model's output (N, 1). The gradients of the logit w.r.t. the
        features are those of the model itself: the CAM maps (cam_math) come from them.

    Raises:
        ValueError: no layers, a path that names no layer (quoting it), a layer whose output
            is not 4-D, or a graph the replay cannot rebuild.
    """
    layers = list(layers)
    if not layers:
        raise ValueError("build_feature_gradient_model: no layers given")
    chains = [resolve_layer_path(model, path) for path in layers]
    for path, chain in zip(layers, chains):
        if is_container(chain[-1]) or output_rank(chain[-1]) not in (4, None):
            raise ValueError(f"layer {path!r} of {model.name!r} has no 4-D (N, h, w, K) output to take a CAM at")
    replay = _Replay(chains, final_layer(model))
    inputs, prob, captured = replay.rebuild(model, 0, list(range(len(chains))))
    missing = [path for i, path in enumerate(layers) if i not in captured]
    if missing or "logit" not in captured:
        raise ValueError(f"replaying {model.name!r} did not reach {', '.join(map(repr, missing)) or 'the output'}")
    features = [captured[i] for i in range(len(layers))]
    for path, tensor in zip(layers, features):
        if len(tensor.shape) != 4:
            raise ValueError(f"layer {path!r} of {model.name!r} has no 4-D (N, h, w, K) output to take a CAM at")
    inputs = inputs[0] if len(inputs) == 1 else inputs  # one input: called with a tensor, not a list
    return keras.Model(inputs, [*features, captured["logit"], prob], name=f"{model.name}_gradcam")


def build_gradcam_model(model: keras.Model, target_layer: str) -> keras.Model:
    """A model with outputs (feature map, logit, probability) sharing `model`'s weights."""
    return build_feature_gradient_model(model, [target_layer])


class GradCam:
    """Probability and a CAM for a batch from one compiled forward + partial backward pass.

    Args:
        model: a keras model with one sigmoid output unit.
        target_layer: the layer of last-layer Grad-CAM (default: find_target_layer's); only
            with `heatmap` None or the default.
        heatmap: which map to compute (cam_math.HeatmapSpec: a method at one layer or a
            fusion of several), e.g. the registry entry's `heatmap`. None: last-layer
            Grad-CAM, exactly as without the argument.
        strict: raise ValueError when `heatmap` names a layer the model lacks (or one with
            no 4-D output); by default the analyzer falls back to last-layer Grad-CAM,
            logs why, and flags every map with the reason (`heatmap_problem`).

    Attributes:
        method: "gradcam", "hirescam" or "layercam" (the map it computes), "none" without one.
        target_layer: the path of the layer the map is taken at; for a fusion, the layers'
            paths joined by "+" in the setting's order (e.g. "block_13_expand_relu+block_6_expand_relu");
            None without a map.
        layers: those paths as a tuple (empty without a map).
        heatmap: the HeatmapSpec computed (the default's layers filled in).

    Build once per loaded model (the ModelManager does, and warms it up); calls are
    thread-safe. When no gradient path exists (no 4-D layer, or a graph the replay cannot
    rebuild), it falls back to the plain forward pass: the probability still comes, with
    no map (all zeros), `method` "none", and every image flagged with the reason
    ("Grad-CAM unavailable: ..."). `pooled_features` always come from the last 4-D layer
    (the layer the input check and the body-part head were fitted on), whatever the map's layers.
    """

    def __init__(self, model: keras.Model, target_layer: str | None = None, heatmap: HeatmapSpec | None = None,
                 *, strict: bool = False):
        import tensorflow as tf  # only the compiled pass needs it: the layer search runs on any backend

        if heatmap is not None and not heatmap.is_default and target_layer is not None:
            raise ValueError("give target_layer (last-layer Grad-CAM) or a heatmap setting with its layers, not both")
        self.model = model
        self.fallback_reason: str | None = None
        self.heatmap_problem: str | None = None
        self._lock = threading.Lock()
        spec = heatmap if heatmap is not None else HeatmapSpec.default()
        try:
            last = find_target_layer(model)
            if not spec.is_default:
                try:
                    self._build(spec, list(spec.layers), last)
                except ValueError as exc:
                    if strict:
                        raise _BadSetting(f"heatmap setting {spec.label!r} does not fit {model.name!r}: {exc}") from None
                    self.heatmap_problem = f"heatmap setting unusable ({exc}); last-layer Grad-CAM shown instead"
                    log.warning("model %s: %s", model.name, self.heatmap_problem)
                    spec = HeatmapSpec.default()
            if spec.is_default:
                self._build(spec, [target_layer or last], last)
            self._fn = tf.function(self._cam_step, reduce_retracing=True)
        except _BadSetting:
            raise
        except ValueError as exc:
            log.warning("Grad-CAM unavailable for %s: %s", model.name, exc)
            self.method, self.fallback_reason = "none", f"Grad-CAM unavailable: {exc}"
            self.target_layer, self.layers, self.heatmap = None, (), None
            self._fn = tf.function(self._forward_step, reduce_retracing=True)

    def _build(self, spec: HeatmapSpec, layers: list[str], last: str) -> None:
        # The last layer rides along (undifferentiated) when the map does not use it: its
        # pooled features feed the input check and the body-part head.
        wanted = layers if last in layers else [*layers, last]
        self._grad_model = build_feature_gradient_model(self.model, wanted)
        self._n_maps, self._pool_index = len(layers), wanted.index(last)
        self.method, self.layers = spec.method, tuple(layers)
        self.target_layer = "+".join(layers)
        self.heatmap = HeatmapSpec(spec.method, tuple(layers) if spec.layers else (), spec.contour_level,
                                   spec.provenance)

    def _cam_step(self, x: tf.Tensor) -> tuple[tf.Tensor, tuple[tf.Tensor, ...], tf.Tensor]:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)  # so the tape records the graph even when weights are frozen
            *features, logit, prob = self._grad_model(x, training=False)
            score = tf.reduce_sum(logit)  # samples are independent: d(sum)/dA_i = d(logit_i)/dA_i
        targets = features[: self._n_maps]
        grads = tape.gradient(score, targets)
        maps = tuple(tf_layer_map(self.method, a, tf.zeros_like(a) if g is None else g)
                     for a, g in zip(targets, grads))
        pooled = tf.reduce_mean(features[self._pool_index], axis=(1, 2))  # pooled, as the head pools
        return tf.reshape(prob, (-1,)), maps, pooled

    def _forward_step(self, x: tf.Tensor) -> tuple[tf.Tensor, tuple[tf.Tensor, ...], None]:
        import tensorflow as tf

        prob = self.model(x, training=False)
        return tf.reshape(prob, (-1,)), (tf.zeros((tf.shape(x)[0], 1, 1)),), None

    def __call__(self, batch: np.ndarray) -> GradCamOutput:
        """batch: float32 (N, H, W, C), model-ready. Returns GradCamOutput (heatmaps (N, h, w)
        at the finest layer's grid, in [0, 1])."""
        import tensorflow as tf

        x = tf.convert_to_tensor(batch, tf.float32)
        prob, maps, pooled = self._fn(x)
        prob = np.clip(np.nan_to_num(prob.numpy().astype(np.float64), nan=0.5), 0.0, 1.0)
        cam = fuse_maps([m.numpy() for m in maps])  # one layer: unchanged
        heatmaps, flags = [], []
        for raw in cam:
            if self.method == "none":
                heatmaps.append(np.zeros_like(raw, np.float32))
                flags.append(self.fallback_reason)
                continue
            norm, flag = normalise_map(raw)
            heatmaps.append(norm)
            flags.append("; ".join(f for f in (flag, self.heatmap_problem) if f) or None)
        pooled = None if pooled is None else pooled.numpy()
        return GradCamOutput(prob, np.stack(heatmaps), tuple(flags), self.method, self.target_layer, pooled)

    def warm_up(self) -> None:
        """Trace the compiled function once (batch of one) so the first real call is fast."""
        with self._lock:
            shape = (1, *self.model.inputs[0].shape[1:])
            self(np.zeros(shape, np.float32))


def tf_layer_map(method: str, a: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
    """cam_math.layer_map in TensorFlow, inside a compiled pass: features A and logit gradients
    g, (N, h, w, K) each -> the raw map (N, h, w) of "gradcam", "hirescam" or "layercam"."""
    import tensorflow as tf

    if method == "gradcam":
        weights = tf.reduce_mean(g, axis=(1, 2), keepdims=True)  # (N, 1, 1, K)
        return tf.nn.relu(tf.reduce_sum(a * weights, axis=-1))
    if method == "hirescam":
        return tf.nn.relu(tf.reduce_sum(a * g, axis=-1))
    return tf.nn.relu(tf.reduce_sum(a * tf.nn.relu(g), axis=-1))  # layercam


class _BadSetting(ValueError):
    """A heatmap setting that does not fit the model (GradCam(strict=True))."""


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
