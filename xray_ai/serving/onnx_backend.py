"""ONNX Runtime backend: probability and exact Grad-CAM from one forward pass, no second pass.

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
this very forward pass. So the whole model is exported to ONNX together with that backward
product, written out as graph operations on the head's (batch-norm-folded) weights: the
export returns the pooled feature map (for the input check), the raw Grad-CAM map
before its ReLU (sum_k A_k g_k / (h w)) and the probability. One ONNX Runtime pass gives them all;
numpy only scales the map to [0, 1]. Computing g inside the graph, right after the forward
pass has read the same kernels, instead of in numpy afterwards (when they have left the
cache) is what keeps analyze() near the bare forward time.

A head of any other form (max pooling, flatten, a tanh, an attention block...) is not
detected, and `detect_head` says why: such a model keeps the TensorFlow path.

The export lives outside git, in a per-user cache keyed by the `.keras` file's sha256:
`<cache>/<sha256>.onnx` and a JSON sidecar that records the ONNX file's own sha256, the
head weights' digest and the layer names. Loading verifies all of them and otherwise
declines with a reason (the caller then serves TensorFlow). `python -m xray_ai export-onnx`
builds exports ahead of time; nothing here exports implicitly.

This module imports neither tensorflow nor onnxruntime at import time: keras is imported
by the functions that inspect or export a model, onnxruntime when a session is opened.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xray_ai.explain.base import GradCamOutput, normalise_map

__all__ = [
    "BACKEND_NAME",
    "BACKENDS",
    "CACHE_ENV",
    "BACKEND_ENV",
    "EXPORT_FORMAT",
    "Head",
    "UnsupportedHead",
    "OnnxGradCam",
    "cache_dir",
    "default_backend",
    "detect_head",
    "export_model",
    "export_paths",
    "export_stamp",
    "load_export",
    "open_session",
    "session_threads",
]

log = logging.getLogger(__name__)

BACKEND_NAME = "onnxruntime"
BACKENDS = ("auto", "onnx", "tensorflow")
CACHE_ENV = "XRAY_AI_ONNX_CACHE"
BACKEND_ENV = "XRAY_AI_BACKEND"
# Bump when the export's layout or meaning changes: older exports are then ignored.
# 1: the feature map only. 2: feature map, each ReLU layer's output, probability.
# 3: pooled features, raw Grad-CAM map (the backward product in the graph), probability.
EXPORT_FORMAT = 3
_CHECK_TOLERANCE = 1e-4  # |p_onnx - p_keras| allowed when an export is checked


class UnsupportedHead(ValueError):
    """The model's head has no closed-form Grad-CAM here; the message says which layer and why."""


# ---------------------------------------------------------------------------- settings


def default_backend() -> str:
    """`$XRAY_AI_BACKEND` (auto | onnx | tensorflow), default "auto". ValueError for another value."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


def cache_dir() -> Path:
    """`$XRAY_AI_ONNX_CACHE`, else `$XDG_CACHE_HOME/xray_ai/onnx`, else `~/.cache/xray_ai/onnx`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xray_ai" / "onnx"


def export_paths(keras_sha256: str, directory: str | Path | None = None) -> tuple[Path, Path]:
    """(onnx file, JSON sidecar) for the `.keras` file with this sha256."""
    return _export_paths_in(keras_sha256, Path(directory) if directory is not None else cache_dir())


@functools.lru_cache(maxsize=256)
def _export_paths_in(keras_sha256: str, root: Path) -> tuple[Path, Path]:
    # Cached: export_stamp asks on every analysis, and pathlib's joins cost more than the stat.
    return root / f"{keras_sha256}.onnx", root / f"{keras_sha256}.json"


def export_stamp(keras_sha256: str, directory: str | Path | None = None) -> tuple | None:
    """Identity of an export for cache keys, so that a new or removed export is picked up:
    (size, mtime) of its sidecar, None while there is none.

    The sidecar alone: every export replaces it, after the ONNX file, and this runs on every
    analysis. An ONNX file replaced by hand with no new sidecar is noticed at the next load,
    which verifies its sha256; until then the session already open keeps serving the
    verified model it read.
    """
    try:
        st = os.stat(export_paths(keras_sha256, directory)[1])
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def session_threads() -> int:
    """Cores this process may use: ONNX Runtime's intra-op threads (one run fills the machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------- head


@dataclass(frozen=True)
class Head:
    """The classification head after the feature map, as float32 numpy arrays (as keras computes).

    steps: from the pooled features to the logit's input, each ("affine", scale, shift)
        for batch norm, or ("dense", kernel (in, out), bias (out,), relu: bool).
    out_kernel: (K_last,) and out_bias: the logit's Dense(1).
    target_layer: `/`-joined path of the feature layer (the pooling layer's input), the same
        layer `xray_ai.gradcam.find_target_layer` picks for the TensorFlow path.
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
        layers, out_kernel, out_bias = self._folded
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
        layers, out_kernel, _ = self._folded
        n, h, w, _ = features_shape
        outputs = iter(relu_outputs)
        masks = [next(outputs) > 0 if relu else None for _, _, _, relu in layers]
        grad = np.broadcast_to(out_kernel, (n, out_kernel.shape[0]))
        for (_, kernel_t, _, _), mask in zip(reversed(layers), reversed(masks)):
            grad = (grad if mask is None else grad * mask) @ kernel_t
        return grad / float(h * w)

    @functools.cached_property
    def _folded(self) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]], np.ndarray, float]:
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


def detect_head(model: Any) -> Head:
    """Read the head of `model` from its graph, walking back from the output.

    Accepted: sigmoid <- Dense(1) <- [Dropout | BatchNormalization | Dense(relu or linear)]*
    <- GlobalAveragePooling2D <- a 4-D feature layer (a nested model's output too). The
    head architectures.build_classifier builds is one case; GAP -> Dense(1, sigmoid) another.

    Raises:
        UnsupportedHead: anything else, naming the first layer that does not fit.
    """
    import keras

    from xray_ai.explain.gradcam import find_target_layer, _resolve_path  # tensorflow: only when a model is at hand

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
    _check_target(model, tensor, target, _resolve_path)
    steps.reverse()
    return Head(tuple(steps), out_kernel, out_bias, target, feature_shape)


def _check_target(model: Any, tensor: Any, target: str, resolve: Any) -> None:
    """The pooled map must be Grad-CAM's target layer (descending into nested models)."""
    chain = resolve(model, target)
    producer, _ = _producer(tensor)
    for depth, layer in enumerate(chain):
        if producer is not layer:
            raise UnsupportedHead(
                f"the pooled feature map comes from {producer.name!r}, not from Grad-CAM's target layer {target!r}"
            )
        if depth + 1 < len(chain):  # a nested model: its output must come from the next layer down
            producer, _ = _producer(layer.outputs[0])


def _head_tensors(model: Any) -> tuple[Any, Any, list[Any]]:
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


def _export_outputs(model: Any, head: Head) -> list[Any]:
    """What the export returns: the pooled features (N, K), the raw Grad-CAM map (N, h, w;
    before the ReLU) and the model's output (the probability, N x 1)."""
    features, pooled, relu_outputs = _head_tensors(model)
    cam = _grad_cam_layer(head)([features, *relu_outputs, model.outputs[0]])
    return [pooled, cam, model.outputs[0]]


def _grad_cam_layer(head: Head) -> Any:
    """A keras layer: [feature map, each ReLU dense layer's output, probability] -> raw
    Grad-CAM map sum_k A_k g_k / (h w) (module docstring), with the head's folded weights
    as constants. Exported into the graph, so ONNX Runtime runs the backward product too."""
    import keras
    from keras import ops

    layers, out_kernel, _ = head._folded
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


# ---------------------------------------------------------------------------- analyzer


class OnnxGradCam:
    """Probability and exact Grad-CAM from one ONNX Runtime pass plus numpy; the same call
    contract as xray_ai.gradcam.GradCam (batch in, GradCamOutput out).

    One session per loaded model, shared by every app session: runs are serialised by a
    lock, because one run already uses every core (intra-op threads = cores) and two at
    once would only make their thread pools fight over them.
    """

    method = "gradcam"
    backend = BACKEND_NAME
    fallback_reason = None

    def __init__(self, session: Any, head: Head, onnx_path: Path):
        self.session = session
        self.head = head
        self.onnx_path = onnx_path
        self.target_layer = head.target_layer
        self._input = session.get_inputs()[0].name
        self._lock = threading.Lock()

    def forward(self, batch: np.ndarray) -> list[np.ndarray]:
        """The export's outputs for a model-ready batch: pooled features (N, K), raw Grad-CAM
        maps (N, h, w), probabilities (N, 1); float32."""
        x = np.ascontiguousarray(batch, np.float32)
        with self._lock:
            return self.session.run(None, {self._input: x})

    def __call__(self, batch: np.ndarray) -> GradCamOutput:
        """batch: float32 (N, H, W, C), model-ready. Returns GradCamOutput."""
        pooled, cams, probabilities = self.forward(batch)
        prob = np.clip(np.nan_to_num(probabilities.reshape(-1).astype(np.float64), nan=0.5), 0.0, 1.0)
        maps, flags = zip(*(normalise_map(cam) for cam in cams))
        return GradCamOutput(prob, np.stack(maps), tuple(flags), self.method, self.target_layer, pooled)

    def warm_up(self) -> None:
        """One run so that ONNX Runtime's first-call allocations are not paid by a user."""
        self(np.zeros((1, *self.session.get_inputs()[0].shape[1:]), np.float32))


def open_session(path: str | Path) -> Any:
    """An ONNX Runtime CPU session configured for this machine: intra-op threads = cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = session_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load_export(
    model: Any, keras_sha256: str, directory: str | Path | None = None, head: Head | None = None
) -> tuple[OnnxGradCam | None, str | None]:
    """The ONNX Runtime analyzer for `model` if a verified export exists, else (None, why).

    Checks: the head has the closed form; the export and its sidecar exist; the sidecar
    names this `.keras` sha256, this export format, these head weights and layer; the ONNX
    file's sha256 matches the sidecar; the session takes just the image and returns the
    feature map. Never raises for a bad export: the reason says what was wrong.
    """
    try:
        head = head or detect_head(model)
    except UnsupportedHead as exc:
        return None, f"head not supported by the ONNX Runtime backend: {exc}"
    onnx_path, meta_path = export_paths(keras_sha256, directory)
    if not onnx_path.is_file():
        return None, f"no ONNX export yet ({onnx_path}); `python -m xray_ai export-onnx` builds it"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"ONNX export sidecar {meta_path.name} unreadable ({type(exc).__name__}: {exc})"
    expected = {
        "format": EXPORT_FORMAT,
        "keras_sha256": keras_sha256,
        "head_sha256": head.digest(),
        "target_layer": head.target_layer,
    }
    for field, want in expected.items():
        if meta.get(field) != want:
            return None, f"ONNX export {onnx_path.name}: sidecar {field} is {meta.get(field)!r}, expected {want!r}"
    actual = _file_sha256(onnx_path)
    if actual != meta.get("onnx_sha256"):
        return None, (
            f"ONNX export {onnx_path.name} fails its check: sha256 {actual[:12]}..., the sidecar records "
            f"{str(meta.get('onnx_sha256'))[:12]}... (file replaced or damaged)"
        )
    try:
        session = open_session(onnx_path)
    except ImportError as exc:
        return None, f"onnxruntime is not installed ({exc})"
    except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
        return None, f"ONNX Runtime cannot open {onnx_path.name} ({type(exc).__name__}: {exc})"
    problem = _check_session(session, model, head)
    if problem:
        return None, f"ONNX export {onnx_path.name}: {problem}"
    return OnnxGradCam(session, head, onnx_path), None


def _check_session(session: Any, model: Any, head: Head) -> str | None:
    ins, outs = session.get_inputs(), session.get_outputs()
    if len(ins) != 1:
        return f"the session takes {len(ins)} inputs ({', '.join(i.name for i in ins)}); only the image is allowed"
    if list(ins[0].shape[1:]) != list(model.inputs[0].shape[1:]):
        return f"the session's input is {ins[0].shape}, the model's {tuple(model.inputs[0].shape)}"
    h, w, k = head.feature_shape
    expected = [[k], [h, w], [1]]
    if [list(o.shape[1:]) for o in outs] != expected:
        return (f"the session returns {[o.shape for o in outs]}, expected (N, ...) shapes {expected}: "
                "pooled features, Grad-CAM map, probability")
    return None


# ---------------------------------------------------------------------------- export


def export_model(model: Any, keras_sha256: str, directory: str | Path | None = None) -> Path:
    """Export `model` with the outputs the backend reads (`_export_outputs`) to the cache,
    checked and atomic.

    The export is run once on a fixed random batch against keras itself: ONNX Runtime's
    probability must agree within 1e-4, and its Grad-CAM maps and pooled features with
    those the numpy head (`Head.raw_cam`) computes from keras' own feature map within 1e-3
    (relative), or nothing is written.

    Returns:
        The `.onnx` path. Raises UnsupportedHead (head without the closed form),
        RuntimeError (export failed or disagrees with keras), OSError (cache not writable).
    """
    import keras

    head = detect_head(model)
    onnx_path, meta_path = export_paths(keras_sha256, directory)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    exported = keras.Model(model.inputs[0], _export_outputs(model, head), name=f"{model.name}_gradcam")
    shape = tuple(model.inputs[0].shape[1:])
    probe = np.random.default_rng(0).uniform(0.0, 1.0, (2, *shape)).astype(np.float32)
    exported(probe[:1])  # keras' export needs a model that has been called once
    start = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(dir=onnx_path.parent, prefix=f".{keras_sha256[:12]}-", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    tmp_meta = meta_path.with_name(f"{tmp.stem}.json")
    try:
        with warnings.catch_warnings():  # tf2onnx's own deprecation noise, not ours to fix
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            exported.export(str(tmp), format="onnx", verbose=False)
        session = open_session(tmp)
        problem = _check_session(session, model, head)
        if problem:
            raise RuntimeError(f"exported graph is unusable: {problem}")
        pooled, cams, p_onnx = OnnxGradCam(session, head, tmp).forward(probe)
        p_keras = np.asarray(model(probe, training=False)).reshape(-1)
        diff = float(np.max(np.abs(p_onnx.reshape(-1) - p_keras)))
        if not diff <= _CHECK_TOLERANCE:
            raise RuntimeError(f"exported model disagrees with keras: |p_onnx - p_keras| = {diff:.2e}")
        # the graph's Grad-CAM must be the numpy head's on keras' own feature map
        features = np.asarray(keras.Model(model.inputs[0], _head_tensors(model)[0])(probe, training=False))
        reference = head.raw_cam(features)
        for name, ours, theirs in (("Grad-CAM maps", cams, reference), ("pooled features", pooled, features.mean(axis=(1, 2)))):
            rel = float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-12))
            if not rel <= 1e-3:
                raise RuntimeError(f"exported graph disagrees with the model's head: {name} differ by {rel:.2e}")
        meta = _sidecar(model, keras_sha256, head, tmp, session, diff, time.perf_counter() - start)
        meta["onnx_file"] = onnx_path.name
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, onnx_path)  # the onnx first: a sidecar never points at a missing file
        os.replace(tmp_meta, meta_path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
    log.info("exported %s to %s in %.1f s (|dp| = %.1e)", model.name, onnx_path, time.perf_counter() - start, diff)
    return onnx_path


def _sidecar(model: Any, keras_sha256: str, head: Head, onnx_file: Path, session: Any, diff: float, seconds: float) -> dict:
    import keras

    from xray_ai.version import __version__

    try:
        import tf2onnx

        exporter = f"keras {keras.__version__} export (tf2onnx {tf2onnx.__version__})"
    except ImportError:
        exporter = f"keras {keras.__version__} export"
    return {
        "format": EXPORT_FORMAT,
        "keras_sha256": keras_sha256,
        "onnx_sha256": _file_sha256(onnx_file),
        "head_sha256": head.digest(),
        "target_layer": head.target_layer,
        "feature_shape": list(head.feature_shape),
        "model_name": model.name,
        "input_name": session.get_inputs()[0].name,
        "output_names": [o.name for o in session.get_outputs()],
        "xray_ai_version": __version__,
        "exporter": exporter,
        "check_max_probability_diff": diff,
        "export_seconds": round(seconds, 2),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
