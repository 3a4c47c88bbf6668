"""The classification head after the feature map, read from a keras model, and its Grad-CAM in closed form.

Why it is exact. The models this project trains end in a small head on the last feature
map A (N x h x w x K): global average pooling, then a chain of batch norm, dense (+ ReLU)
and dropout layers, then one logit and a sigmoid. Pooling, batch norm and dense layers
are affine and ReLU is piecewise linear, so for one input the gradient of the logit z
with respect to A is the same at every position (i, j):

    dz/dA_ijk = (1 / (h w)) * g_k,   g = S_1 W_1 D_1 ... W_n D_n w_out

where S is batch norm's per-channel scale gamma / sqrt(var + eps), W a dense kernel, D
the 0/1 mask of that layer's active ReLUs (identity when it has none) and w_out the logit's
kernel; dropout is the identity at inference. Grad-CAM's channel weights (the spatial mean
of that gradient) are therefore g / (h w), fixed by the head's weights and the masks of
this very forward pass. `grad_cam_layer` writes that backward product as graph operations
on the head's (batch-norm-folded) weights, so that the ONNX export (serving.onnx_backend)
computes it right after the forward pass has read the same kernels, instead of in numpy
afterwards (when they have left the cache): that is what keeps analyze() near the bare
forward time. `Head.evaluate` / `Head.raw_cam` compute the same in numpy, as the reference.

A head of any other form (max pooling, flatten, a tanh, an attention block...) is not
detected, and `detect_head` says why: such a model keeps the TensorFlow path.

numpy only at import: keras (and so TensorFlow) is imported by the functions that read a
model, which only run once a model is at hand.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

__all__ = ["Head", "UnsupportedHead", "detect_head", "head_tensors", "grad_cam_layer"]


class UnsupportedHead(ValueError):
    """The model's head has no closed-form Grad-CAM here; the message says which layer and why."""


@dataclass(frozen=True)
class Head:
    """The classification head after the feature map, as float32 numpy arrays (as keras computes).

    steps: from the pooled features to the logit's input, each ("affine", scale, shift)
        for batch norm, or ("dense", kernel (in, out), bias (out,), relu: bool).
    out_kernel: (K_last,) and out_bias: the logit's Dense(1).
    target_layer: `/`-joined path of the feature layer (the pooling layer's input), the same
        layer `xray_ai.explain.gradcam.find_target_layer` picks for the TensorFlow path.
    feature_shape: (h, w, K) of the feature map.
    """

    steps: tuple[tuple, ...]
    out_kernel: np.ndarray
    out_bias: float
    target_layer: str
    feature_shape: tuple[int, int, int]

    def digest(self) -> str:
        """sha256 over every weight and the layout, to tie an export to these weights."""
        h = hashlib.sha256(repr((self.target_layer, self.feature_shape, [s[0] for s in self.steps])).encode())
        for step in self.steps:
            for part in step[1:]:
                h.update(np.ascontiguousarray(np.asarray(part, np.float64)).tobytes())
        h.update(np.ascontiguousarray(self.out_kernel, np.float64).tobytes())
        h.update(np.float64(self.out_bias).tobytes())
        return h.hexdigest()

    def evaluate(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N,), Grad-CAM channel weights (N, K)) for feature maps (N, h, w, K), all
        in numpy: the head's forward pass, then `channel_weights` from its ReLU outputs.
        (The export's graph computes the same; this is its reference.)
        """
        layers, out_kernel, out_bias = self.folded
        x = features.mean(axis=(1, 2), dtype=np.float32)  # global average pooling
        relu_outputs = []
        for kernel, _, bias, relu in layers:
            x = x @ kernel + bias
            if relu:
                x = np.maximum(x, np.float32(0.0))
                relu_outputs.append(x)
        logits = x @ out_kernel + out_bias
        return logits, self.channel_weights(relu_outputs, features.shape)

    def raw_cam(self, features: np.ndarray) -> np.ndarray:
        """sum_k A_k * weight_k (N, h, w), before the ReLU, in numpy: what the export's graph
        computes (its reference in the export check and the tests)."""
        n, h, w, k = features.shape
        weights = self.evaluate(features)[1].astype(np.float32)
        return np.matmul(features.reshape(n, h * w, k), weights[:, :, None]).reshape(n, h, w)

    def channel_weights(self, relu_outputs: list[np.ndarray], features_shape: tuple[int, ...]) -> np.ndarray:
        """Grad-CAM channel weights (N, K): dlogit/dA averaged over the feature map's
        positions (what the TensorFlow path computes with a GradientTape).

        Args:
            relu_outputs: the output (N, units) of each ReLU dense layer of the head, in
                forward order; a unit's ReLU passed the gradient iff its output is > 0.
            features_shape: (N, h, w, K) of the feature map.
        """
        layers, out_kernel, _ = self.folded
        n, h, w, _ = features_shape
        outputs = iter(relu_outputs)
        masks = [next(outputs) > 0 if relu else None for _, _, _, relu in layers]
        grad = np.broadcast_to(out_kernel, (n, out_kernel.shape[0]))
        for (_, kernel_t, _, _), mask in zip(reversed(layers), reversed(masks)):
            grad = (grad if mask is None else grad * mask) @ kernel_t
        return grad / float(h * w)

    @functools.cached_property
    def folded(self) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]], np.ndarray, float]:
        """The steps with every batch norm folded into the dense layer (or logit) after it.

        ((x * s + t) @ W + b = x @ (s W) + (t W + b), in float64 then float32.) Each dense
        layer is (kernel, its transpose made contiguous for the backward pass, bias, relu).
        Done once per head, so that per batch the channel weights cost one product per dense
        layer, reading each kernel in memory order.
        """
        layers = []
        scale, shift = None, None  # the affine map pending since the last dense layer
        for step in self.steps:
            if step[0] == "affine":
                s, t = np.asarray(step[1], np.float64), np.asarray(step[2], np.float64)
                scale, shift = (s, t) if scale is None else (scale * s, shift * s + t)
                continue
            kernel, bias = np.asarray(step[1], np.float64), np.asarray(step[2], np.float64)
            if scale is not None:
                kernel, bias, scale, shift = scale[:, None] * kernel, shift @ kernel + bias, None, None
            kernel = _f32(kernel)
            layers.append((kernel, np.ascontiguousarray(kernel.T), _f32(bias), step[3]))
        out_kernel, out_bias = np.asarray(self.out_kernel, np.float64), float(self.out_bias)
        if scale is not None:
            out_kernel, out_bias = scale * out_kernel, float(shift @ out_kernel) + out_bias
        return layers, _f32(out_kernel), out_bias


def _producer(tensor: Any) -> tuple[Any, list[Any]]:
    """(layer that made `tensor`, that call's input tensors), by the node, not `layer.input`
    (a layer called again, as the Grad-CAM replay does, has several inbound nodes)."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise UnsupportedHead("the model's graph cannot be traced back (not a functional model?)")
    layer = history.operation
    node = layer._inbound_nodes[history.node_index]
    return layer, list(node.input_tensors)


def _activation_name(layer: Any) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", str(activation)) if activation is not None else "linear"


def _np(variable: Any) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)  # combined in float64, stored float32


def _f32(array: Any) -> np.ndarray:
    return np.ascontiguousarray(array, np.float32)


def _single_input(layer: Any, inputs: list[Any]) -> Any:
    if len(inputs) != 1:
        raise UnsupportedHead(f"layer {layer.name!r} takes {len(inputs)} inputs; the head must be a chain")
    return inputs[0]


def detect_head(model: keras.Model) -> Head:
    """Read the head of `model` from its graph, walking back from the output.

    Accepted: sigmoid <- Dense(1) <- [Dropout | BatchNormalization | Dense(relu or linear)]*
    <- GlobalAveragePooling2D <- a 4-D feature layer (a nested model's output too). The
    head architectures.build_classifier builds is one case; GAP -> Dense(1, sigmoid) another.

    Raises:
        UnsupportedHead: anything else, naming the first layer that does not fit.
    """
    import keras

    # lazy: explain.gradcam imports keras (TensorFlow), and a model is at hand only now
    from xray_ai.explain.gradcam import find_target_layer, resolve_layer_path

    if len(model.outputs) != 1:
        raise UnsupportedHead(f"model {model.name!r} has {len(model.outputs)} outputs, not one")
    layer, inputs = _producer(model.outputs[0])
    if isinstance(layer, keras.layers.Activation) and _activation_name(layer) == "sigmoid":
        layer, inputs = _producer(_single_input(layer, inputs))
        if _activation_name(layer) != "linear":
            raise UnsupportedHead(f"the sigmoid's input layer {layer.name!r} is not a linear logit")
    elif not (isinstance(layer, keras.layers.Dense) and _activation_name(layer) == "sigmoid"):
        raise UnsupportedHead(f"the output layer {layer.name!r} ({type(layer).__name__}) is not a sigmoid")
    if not isinstance(layer, keras.layers.Dense) or layer.units != 1:
        raise UnsupportedHead(f"the logit layer {layer.name!r} ({type(layer).__name__}) is not a Dense(1)")
    out_kernel = _f32(_np(layer.kernel)[:, 0])
    out_bias = float(_np(layer.bias)[0]) if layer.use_bias else 0.0

    steps: list[tuple] = []
    tensor = _single_input(layer, inputs)
    while True:
        layer, inputs = _producer(tensor)
        tensor = _single_input(layer, inputs)
        if isinstance(layer, keras.layers.GlobalAveragePooling2D):
            if layer.data_format != "channels_last" or layer.keepdims:
                raise UnsupportedHead(f"pooling layer {layer.name!r} is not channels-last without keepdims")
            break
        if isinstance(layer, keras.layers.Dropout):
            continue  # the identity at inference
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.axis not in (-1, 1):
                raise UnsupportedHead(f"batch norm {layer.name!r} normalises axis {layer.axis}, not the features")
            inv = 1.0 / np.sqrt(_np(layer.moving_variance) + layer.epsilon)
            gamma = _np(layer.gamma) if layer.scale else 1.0
            beta = _np(layer.beta) if layer.center else 0.0
            scale = gamma * inv
            steps.append(("affine", _f32(scale), _f32(beta - _np(layer.moving_mean) * scale)))
            continue
        if isinstance(layer, keras.layers.Dense) and _activation_name(layer) in ("relu", "linear"):
            kernel = _np(layer.kernel)
            bias = _np(layer.bias) if layer.use_bias else np.zeros(kernel.shape[1])
            steps.append(("dense", _f32(kernel), _f32(bias), _activation_name(layer) == "relu"))
            continue
        raise UnsupportedHead(
            f"layer {layer.name!r} ({type(layer).__name__}, activation {_activation_name(layer)}) between the "
            "features and the logit has no closed-form Grad-CAM here; only global average pooling, batch norm, "
            "dense (ReLU or linear) and dropout do"
        )
    feature_shape = tuple(tensor.shape[1:])
    if len(feature_shape) != 3 or None in feature_shape:
        raise UnsupportedHead(f"the pooled feature map has shape {tuple(tensor.shape)}, not (N, h, w, K)")
    target = find_target_layer(model)
    _check_target(tensor, target, resolve_layer_path(model, target))
    steps.reverse()
    return Head(tuple(steps), out_kernel, out_bias, target, feature_shape)


def _check_target(tensor: Any, target: str, chain: list[keras.layers.Layer]) -> None:
    """The pooled map must be Grad-CAM's target layer `target`, whose layers (outermost
    first, descending into nested models) are `chain`."""
    producer, _ = _producer(tensor)
    for depth, layer in enumerate(chain):
        if producer is not layer:
            raise UnsupportedHead(
                f"the pooled feature map comes from {producer.name!r}, not from Grad-CAM's target layer {target!r}"
            )
        if depth + 1 < len(chain):  # a nested model: its output must come from the next layer down
            producer, _ = _producer(layer.outputs[0])


def head_tensors(model: keras.Model) -> tuple[Any, Any, list[Any]]:
    """In `model`'s graph (call after detect_head): the feature map (the pooling layer's
    input), the pooled features (its output) and each ReLU dense layer's output, forward order."""
    import keras

    relu_outputs = []
    layer, inputs = _producer(model.outputs[0])
    tensor = model.outputs[0]
    while not isinstance(layer, keras.layers.GlobalAveragePooling2D):
        if isinstance(layer, keras.layers.Dense) and _activation_name(layer) == "relu":
            relu_outputs.append(tensor)
        tensor = inputs[0]
        layer, inputs = _producer(tensor)
    return inputs[0], tensor, relu_outputs[::-1]


def grad_cam_layer(head: Head) -> keras.layers.Layer:
    """A keras layer: [feature map, each ReLU dense layer's output, probability] -> raw
    Grad-CAM map sum_k A_k g_k / (h w) (module docstring), with the head's folded weights
    as constants. Exported into the graph, so ONNX Runtime runs the backward product too."""
    import keras
    from keras import ops

    layers, out_kernel, _ = head.folded
    h, w, k = head.feature_shape

    class ExactGradCam(keras.layers.Layer):
        def call(self, inputs):
            features, *relu_outputs, probability = inputs
            outputs = iter(relu_outputs)
            # (N, K_last): the logit's kernel for every image of the batch
            grad = ops.ones_like(probability) * ops.convert_to_tensor(out_kernel[None, :])
            masks = [ops.greater(next(outputs), 0.0) if relu else None for _, _, _, relu in layers]
            for (_, kernel_t, _, _), mask in zip(reversed(layers), reversed(masks)):
                if mask is not None:
                    grad = grad * ops.cast(mask, "float32")
                grad = ops.matmul(grad, ops.convert_to_tensor(kernel_t))
            weights = ops.expand_dims(grad / float(h * w), -1)  # (N, K, 1)
            cam = ops.matmul(ops.reshape(features, (-1, h * w, k)), weights)
            return ops.reshape(cam, (-1, h, w))

    return ExactGradCam(name="exact_grad_cam")
