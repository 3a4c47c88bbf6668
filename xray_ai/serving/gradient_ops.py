"""Backward passes ONNX can run: gradients of the logit written with forward operations only.

The finer heatmaps (LayerCAM, HiResCAM, fusion at a stride-16 or stride-8 layer; see
xray_ai.explain.cam_math) need the gradient of the logit with respect to an inner feature
map, so the ONNX export must carry the backward pass through the network's tail. TensorFlow
writes that pass with its own gradient kernels (Relu6Grad, ReluGrad,
DepthwiseConv2dNativeBackpropInput, ShapeN, the dynamic-rank reshapes of Mean's gradient),
which tf2onnx cannot convert. Inside `exportable_gradients()` the ops of a forward pass get
these gradients instead, each the same mathematics in operations ONNX has:

- ReLU / ReLU6: the upstream gradient times the 0/1 mask of the active units.
- 1x1 convolution, stride 1: a 1x1 convolution with the transposed kernel.
- Other convolutions: `conv2d_transpose` (ONNX ConvTranspose).
- Depthwise convolution: the upstream gradient dilated by the stride (zeros between its
  samples), padded, and correlated with the spatially flipped kernel; then cropped to the
  input as TensorFlow's SAME/VALID padding placed it.
- Global mean over height and width: the gradient spread evenly, with static shapes.
- A residual sum of two maps of one shape: the gradient passed to both (TensorFlow's own
  computes a broadcast reduction at run time, BroadcastGradientArgs, which ONNX lacks).
- Concatenation (DenseNet): the gradient split back into the parts at static sizes
  (TensorFlow's own asks for the shapes at run time, ShapeN).
- Average pooling with pool = stride (DenseNet's transitions): each value spread over its
  window.

Only the gradient with respect to the op's data input is written (None for weights): the
export differentiates with respect to feature maps, never to weights. They are exact, not
approximations: tests/test_onnx_gradients.py compares them with TensorFlow's own gradients,
and every export is checked against TensorFlow's maps before it is written
(serving.onnx_backend).

`tf.gradients` (not a GradientTape) must be used under the override: only graph-mode
gradients honour `gradient_override_map`. Importing this module imports TensorFlow; only the
export imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import tensorflow as tf

__all__ = ["OVERRIDES", "exportable_gradients"]


def _active(x: tf.Tensor, dy: tf.Tensor, upper: float | None) -> tf.Tensor:
    mask = tf.greater(x, 0.0)
    if upper is not None:
        mask = tf.logical_and(mask, tf.less(x, upper))
    return dy * tf.cast(mask, dy.dtype)


def _relu_grad(op: tf.Operation, dy: tf.Tensor) -> tf.Tensor:
    return _active(op.outputs[0], dy, None)


def _relu6_grad(op: tf.Operation, dy: tf.Tensor) -> tf.Tensor:
    return _active(op.inputs[0], dy, 6.0)


def _nhwc(op: tf.Operation) -> None:
    if op.get_attr("data_format") != b"NHWC":
        raise ValueError(f"{op.name}: only NHWC layouts are exported with gradients")


def _conv_grad(op: tf.Operation, dy: tf.Tensor) -> list:
    _nhwc(op)
    x, kernel = op.inputs
    strides, padding = list(op.get_attr("strides")), op.get_attr("padding").decode()
    dilations = list(op.get_attr("dilations"))
    if padding == "EXPLICIT":
        raise ValueError(f"{op.name}: explicit padding is not exported with gradients")
    dx = tf.nn.conv2d_transpose(dy, kernel, tf.shape(x), strides, padding, dilations=dilations)
    return [dx, None]


def _dilate(t: tf.Tensor, stride: int, axis: int) -> tf.Tensor:
    """`stride - 1` zeros after every sample along `axis` (static shapes, so ONNX keeps the rank)."""
    if stride == 1:
        return t
    stacked = tf.stack([t] + [tf.zeros_like(t)] * (stride - 1), axis=axis + 1)
    dims = [-1, *t.shape[1:]]
    dims[axis] *= stride
    return tf.reshape(stacked, dims)


def _pads_before(size: int, out: int, stride: int, k: int, padding: str) -> int:
    """Where TensorFlow's padding put the input's first row: SAME pads the smaller half before."""
    if padding != "SAME":
        return 0
    return max((out - 1) * stride + k - size, 0) // 2


def _depthwise_grad(op: tf.Operation, dy: tf.Tensor) -> list:
    _nhwc(op)
    x, kernel = op.inputs
    strides, padding = list(op.get_attr("strides")), op.get_attr("padding").decode()
    if list(op.get_attr("dilations")) != [1, 1, 1, 1] or strides[1] != strides[2] or padding == "EXPLICIT":
        raise ValueError(f"{op.name}: only undilated, square-strided SAME/VALID depthwise convolutions")
    kh, kw, _, multiplier = kernel.shape
    if multiplier != 1:
        raise ValueError(f"{op.name}: depth multiplier {multiplier}; only 1 is exported with gradients")
    s = strides[1]
    h, w = x.shape[1], x.shape[2]
    ho, wo = dy.shape[1], dy.shape[2]
    d = _dilate(_dilate(dy, s, 1), s, 2)
    if s > 1:
        d = d[:, : (ho - 1) * s + 1, : (wo - 1) * s + 1, :]
    d = tf.pad(d, [[0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1], [0, 0]])
    full = tf.nn.depthwise_conv2d(d, tf.reverse(kernel, [0, 1]), [1, 1, 1, 1], "VALID")
    top, left = _pads_before(h, ho, s, kh, padding), _pads_before(w, wo, s, kw, padding)
    # rows of the padded input that no window reached have gradient zero
    extra_h, extra_w = max(h + top - ((ho - 1) * s + kh), 0), max(w + left - ((wo - 1) * s + kw), 0)
    full = tf.pad(full, [[0, 0], [0, extra_h], [0, extra_w], [0, 0]])
    return [full[:, top:top + h, left:left + w, :], None]


def _mean_grad(op: tf.Operation, dy: tf.Tensor) -> list:
    x, axes = op.inputs
    value = tf.get_static_value(axes)
    if value is None or x.shape.rank != 4 or sorted(int(a) % 4 for a in value.reshape(-1)) != [1, 2]:
        raise ValueError(f"{op.name}: only the spatial mean of a 4-D map is exported with gradients")
    h, w, k = x.shape[1], x.shape[2], x.shape[3]
    return [tf.zeros_like(x) + tf.reshape(dy, [-1, 1, 1, k]) / float(h * w), None]


def _avg_pool_grad(op: tf.Operation, dy: tf.Tensor) -> tf.Tensor:
    _nhwc(op)
    x = op.inputs[0]
    ksize, strides = list(op.get_attr("ksize")), list(op.get_attr("strides"))
    if ksize != strides or ksize[1] != ksize[2] or op.get_attr("padding") != b"VALID":
        raise ValueError(f"{op.name}: only VALID average pooling with pool = stride is exported with gradients")
    s = ksize[1]
    spread = tf.repeat(tf.repeat(dy, s, axis=1), s, axis=2) / float(s * s)
    h, w = x.shape[1], x.shape[2]
    return tf.pad(spread, [[0, 0], [0, h - spread.shape[1]], [0, w - spread.shape[2]], [0, 0]])


def _add_grad(op: tf.Operation, dy: tf.Tensor) -> list:
    """A residual sum of two maps of one shape passes the gradient to both unchanged; any
    other sum (a broadcast bias) keeps TensorFlow's gradient, whose shape arithmetic then
    folds to constants."""
    a, b = op.inputs
    if a.shape.rank == b.shape.rank and a.shape[1:] == b.shape[1:] and a.shape[1:].is_fully_defined():
        return [dy, dy]
    return _tensorflow_gradient(op, dy)


def _concat_grad(op: tf.Operation, dy: tf.Tensor) -> list:
    """DenseNet's concatenations: the gradient sliced back into the parts, at static offsets."""
    *parts, axis = op.inputs
    axis_value = tf.get_static_value(axis)
    sizes = [p.shape[int(axis_value)] if axis_value is not None else None for p in parts]
    if axis_value is None or None in sizes:
        raise ValueError(f"{op.name}: only concatenations of static size are exported with gradients")
    return [*tf.split(dy, sizes, axis=int(axis_value)), None]


def _tensorflow_gradient(op: tf.Operation, dy: tf.Tensor) -> list:
    from tensorflow.python.framework import ops  # the registry tf.RegisterGradient writes to

    return ops._gradient_registry.lookup(op.type)(op, dy)


_GRADIENTS = {
    "AddV2": _add_grad,
    "ConcatV2": _concat_grad,
    "Relu": _relu_grad,
    "Relu6": _relu6_grad,
    "Conv2D": _conv_grad,
    "DepthwiseConv2dNative": _depthwise_grad,
    "Mean": _mean_grad,
    "AvgPool": _avg_pool_grad,
}

#: op type -> the name its exportable gradient is registered under
OVERRIDES = {op_type: f"XrayAiExportable{op_type}" for op_type in _GRADIENTS}
for _op_type, _fn in _GRADIENTS.items():
    tf.RegisterGradient(OVERRIDES[_op_type])(_fn)


@contextlib.contextmanager
def exportable_gradients() -> Iterator[None]:
    """Inside a `tf.function`: ops created here differentiate (with `tf.gradients`) through
    the exportable gradients above instead of TensorFlow's kernels."""
    with tf.compat.v1.get_default_graph().gradient_override_map(OVERRIDES):
        yield
