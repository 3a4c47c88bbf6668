"""Building ONNX exports: the graph, its check against TensorFlow, and its atomic write.

Two kinds of export, both returning (pooled features, map_1 ... map_n, probability):

- **Closed form** (the default heatmap, last-layer Grad-CAM): the forward pass plus the
  head's closed-form backward product (serving.head), one raw Grad-CAM map (n = 1).
- **Gradients** (a registry `heatmap` setting at finer layers: LayerCAM, HiResCAM, fusion;
  xray_ai.explain.cam_math): the forward pass, the backward pass of the logit through the
  network's tail down to the finest listed layer, and each layer's map computed in the graph
  (the formula GradCam's compiled pass uses). TensorFlow's own gradient kernels do not
  convert to ONNX, so the graph is written under `gradient_ops.exportable_gradients()`,
  whose gradients are the same mathematics in forward operations.

Either is run on a fixed random probe before it is written: its probability must agree with
keras within 1e-4, and its maps with TensorFlow's (closed form: the numpy head on keras'
feature map within 1e-3 relative; gradients: GradCam's maps for the same setting with
correlation at least 0.999), or nothing is written and the caller serves TensorFlow.

Imports keras (so TensorFlow) when an export is built; nothing else here runs at import.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xray_ai.explain.cam_math import HeatmapSpec
from xray_ai.serving.artifacts import file_sha256
from xray_ai.serving.export_check import CHECK_TOLERANCE, disagreement
from xray_ai.serving.head import Head, detect_head, grad_cam_layer, head_tensors
from xray_ai.serving.model_file_weights import channel_scale, read_weights_from_model_file, save_with_initializers
from xray_ai.version import __version__

if TYPE_CHECKING:
    import keras
    import onnxruntime

__all__ = ["EXPORT_FORMAT", "MAP_CORRELATION", "check_against_tensorflow", "export_to", "map_agreement", "probe_batch",
           "variant_name"]

log = logging.getLogger(__name__)

# Bump when the export's layout or meaning changes: older exports are then ignored.
# 1: the feature map only. 2: feature map, each ReLU layer's output, probability.
# 3: pooled features, raw map(s) (closed-form Grad-CAM, or each layer's CAM from the
#    gradients in the graph), probability; the sidecar's `heatmap` says which.
EXPORT_FORMAT = 3
MAP_CORRELATION = 0.999  # the least correlation of a gradient export's maps with TensorFlow's


def variant_name(spec: HeatmapSpec | None) -> str | None:
    """The file-name part that tells a finer-map export from the closed-form one: None for
    last-layer Grad-CAM, else the method and a digest of the layers."""
    if spec is None or spec.is_default:
        return None
    digest = hashlib.sha256("\n".join(spec.layers).encode()).hexdigest()[:12]
    return f"{spec.method}-{digest}"


def probe_batch(shape: tuple[int, ...]) -> np.ndarray:
    """The fixed random batch every export is checked on (two images in [0, 1])."""
    return np.random.default_rng(0).uniform(0.0, 1.0, (2, *shape)).astype(np.float32)


def map_agreement(onnx_maps: list[np.ndarray], tf_maps: np.ndarray) -> str | None:
    """Why a gradient export's fused, normalised maps differ from TensorFlow's, or None."""
    from xray_ai.explain.base import normalise_map
    from xray_ai.explain.cam_math import fuse_maps

    ours = np.stack([normalise_map(m)[0] for m in fuse_maps(onnx_maps)]).ravel().astype(np.float64)
    theirs = np.asarray(tf_maps, np.float64).ravel()
    if ours.shape != theirs.shape:
        return f"maps of shape {ours.shape}, TensorFlow's {theirs.shape}"
    if np.allclose(ours, theirs, atol=1e-6):
        return None
    r = float(np.corrcoef(ours, theirs)[0, 1]) if ours.std() > 0 and theirs.std() > 0 else 0.0
    return None if r >= MAP_CORRELATION else f"map correlation {r:.5f} with TensorFlow's (least {MAP_CORRELATION})"


# ---------------------------------------------------------------------------- graphs


def _closed_form_model(model: keras.Model, head: Head) -> keras.Model:
    import keras

    features, pooled, relu_outputs = head_tensors(model)
    cam = grad_cam_layer(head)([features, *relu_outputs, model.outputs[0]])
    return keras.Model(model.inputs[0], [pooled, cam, model.outputs[0]], name=f"{model.name}_gradcam")


def _gradient_function(model: keras.Model, spec: HeatmapSpec) -> tuple[Any, Any]:
    """(tf.function image -> (pooled, map_1..map_n, probability), its input signature)."""
    import tensorflow as tf

    from xray_ai.explain.gradcam import build_feature_gradient_model, find_target_layer, tf_layer_map
    from xray_ai.serving.gradient_ops import exportable_gradients

    layers = list(spec.layers)
    last = find_target_layer(model)
    wanted = layers if last in layers else [*layers, last]
    replay = build_feature_gradient_model(model, wanted)
    n, pool_index = len(layers), wanted.index(last)
    signature = [tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name="image")]

    @tf.function(input_signature=signature)
    def analyse(x: tf.Tensor) -> tuple:
        with exportable_gradients():
            *features, logit, prob = replay(x, training=False)
        grads = tf.gradients(tf.reduce_sum(logit), features[:n])  # graph mode: the overrides apply
        maps = [tf_layer_map(spec.method, a, tf.zeros_like(a) if g is None else g)
                for a, g in zip(features[:n], grads)]
        pooled = tf.reduce_mean(features[pool_index], axis=(1, 2))
        return (pooled, *maps, tf.reshape(prob, (-1, 1)))

    return analyse, signature


def _write_graph(model: keras.Model, spec: HeatmapSpec, head: Head | None, target: Path) -> str:
    """Write the ONNX graph of `spec` for `model` to `target`; returns the exporter's name."""
    import keras

    with warnings.catch_warnings():  # tf2onnx's own deprecation noise, not ours to fix
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        import tf2onnx

        if spec.is_default:
            exported = _closed_form_model(model, head)
            exported(probe_batch(tuple(model.inputs[0].shape[1:]))[:1])  # keras' export needs a called model
            exported.export(str(target), format="onnx", verbose=False)
            return f"keras {keras.__version__} export (tf2onnx {tf2onnx.__version__})"
        function, signature = _gradient_function(model, spec)
        tf2onnx.convert.from_function(function, input_signature=signature, opset=17, output_path=str(target))
        shared = share_backward_weights(target)
        return (f"tf2onnx {tf2onnx.__version__} from_function, exportable gradients (xray_ai.serving.gradient_ops); "
                f"{shared} backward kernels derived from the forward ones")


def share_backward_weights(path: Path) -> int:
    """Store each backward kernel as an operation on its forward twin, not as a second copy.

    tf2onnx folds batch norm into the forward convolutions' kernels (W * s per output
    channel) while the backward pass's ConvTranspose keeps the raw kernel W, and the head's
    backward MatMul a transposed copy: the export held the network's weights twice. Here each
    such initializer is replaced by `Div(W * s, s)` or `Transpose(W)` of the forward one, which
    ONNX Runtime folds back into a constant when it opens the session (in memory; the file
    holds each kernel once). The division may differ from W in the last bit, well inside what
    the export's check against TensorFlow allows. Returns how many kernels were shared.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    uses: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            uses.setdefault(name, set()).add(node.op_type)
    forward = {}
    for name, array in arrays.items():
        if uses.get(name) == {"Conv"} and array.ndim == 4 or uses.get(name) == {"MatMul"} and array.ndim == 2:
            forward.setdefault(array.shape, []).append(name)
    replaced: dict[str, tuple[str, Any]] = {}
    twins: set[str] = set()  # kept as they are: a kernel is derived from a stored one, never from a derived one
    for name, array in arrays.items():
        if array.size < 4096 or name in twins:  # small kernels are not worth a node
            continue
        if uses.get(name) == {"ConvTranspose"} and array.ndim == 4:
            for twin in forward.get(array.shape, ()):
                scale = None if twin in replaced else channel_scale(arrays[twin], array)
                if scale is not None:
                    replaced[name] = ("Div", (twin, scale))
                    twins.add(twin)
                    break
        elif uses.get(name) == {"MatMul"} and array.ndim == 2:
            for twin in forward.get(array.shape[::-1], ()):
                if twin not in replaced and np.array_equal(arrays[twin].T, array):
                    replaced[name] = ("Transpose", twin)
                    twins.add(twin)
                    break
    if not replaced:
        return 0
    kept = [i for i in graph.initializer if i.name not in replaced]
    new_nodes = []
    for name, (op, what) in replaced.items():
        if op == "Div":
            twin, scale = what
            scale_name = f"{name}__channel_scale"
            kept.append(numpy_helper.from_array(scale.reshape(-1, 1, 1, 1).astype(np.float32), scale_name))
            new_nodes.append(helper.make_node("Div", [twin, scale_name], [name], name=f"{name}__shared"))
        else:
            new_nodes.append(helper.make_node("Transpose", [what], [name], perm=[1, 0], name=f"{name}__shared"))
    save_with_initializers(graph_model, kept, new_nodes, path)
    return len(replaced)


def check_against_tensorflow(model: keras.Model, spec: HeatmapSpec, head: Head | None, analyzer: Any) -> tuple[str | None, float]:
    """(why the export's results on the fixed probe disagree with TensorFlow's for `spec`, or
    None; max |p_onnx - p_keras|). The closed form is held to the numpy head on keras'
    feature map (export_check.disagreement), a gradient export to GradCam's maps."""
    probe = probe_batch(tuple(model.inputs[0].shape[1:]))
    outputs = analyzer.forward(probe)
    p_keras = np.asarray(model(probe, training=False)).reshape(-1)
    diff = float(np.max(np.abs(outputs[-1].reshape(-1) - p_keras)))
    if spec.is_default:
        return disagreement(analyzer, model, head, probe), diff
    if not diff <= CHECK_TOLERANCE:
        return f"|p_onnx - p_keras| = {diff:.2e} (allowed {CHECK_TOLERANCE:.0e})", diff
    from xray_ai.explain.gradcam import GradCam

    reference = GradCam(model, heatmap=spec, strict=True)(probe)
    problem = map_agreement(outputs[1:-1], reference.heatmaps)
    if problem is None and reference.pooled_features is not None:
        rel = float(np.linalg.norm(outputs[0] - reference.pooled_features)
                    / max(np.linalg.norm(reference.pooled_features), 1e-12))
        if not rel <= 1e-3:
            problem = f"pooled features differ by {rel:.2e} (relative; allowed 1e-3)"
    return problem, diff


# ---------------------------------------------------------------------------- writing


def export_to(model: keras.Model, keras_sha256: str, onnx_path: Path, meta_path: Path,
              spec: HeatmapSpec | None = None, *, weights_from: Path | None = None) -> dict:
    """Export `model` computing `spec`'s map (default: last-layer Grad-CAM in closed form)
    to `onnx_path`, checked against TensorFlow, with its JSON sidecar at `meta_path`; both
    written atomically (temporary files, then rename; the ONNX file first).

    weights_from: the `.keras` file beside `onnx_path` that `model` was loaded from; the
    export then reads its large weights from it instead of holding a second copy
    (serving.model_file_weights; for exports shipped beside their model, pinned with it).

    Returns the sidecar. Raises UnsupportedHead (closed form for a head without it),
    ValueError (a setting that does not fit the model, or a layer the exportable gradients
    do not cover), RuntimeError (export failed or disagrees with TensorFlow), OSError.
    """
    from xray_ai.serving.onnx_session import OnnxGradCam, check_session_shapes, open_session

    spec = spec or HeatmapSpec.default()
    head = detect_head(model) if spec.is_default else None
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(dir=onnx_path.parent, prefix=f".{keras_sha256[:12]}-", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    tmp_meta = meta_path.with_name(f"{tmp.stem}.json")
    try:
        try:
            exporter = _write_graph(model, spec, head, tmp)
        except ValueError:
            raise
        except Exception as exc:  # tf2onnx raises its own types for an op it cannot convert
            raise RuntimeError(f"ONNX conversion failed ({type(exc).__name__}: {exc})") from exc
        if weights_from is not None:
            moved, size = read_weights_from_model_file(tmp, weights_from)
            exporter += f"; {moved} weights ({size / 1e6:.1f} MB) read from {weights_from.name}"
        try:
            session = open_session(tmp)
        except Exception as exc:  # onnxruntime's own exception types for a graph it refuses
            raise RuntimeError(f"ONNX Runtime cannot open the export ({type(exc).__name__}: {exc})") from exc
        analyzer = OnnxGradCam(session, tmp, spec=spec)
        problem = check_session_shapes(session, tuple(model.inputs[0].shape[1:]))
        if problem:
            raise RuntimeError(f"exported graph is unusable: {problem}")
        problem, diff = check_against_tensorflow(model, spec, head, analyzer)
        if problem:
            raise RuntimeError(f"exported graph disagrees with the model: {problem}")
        meta = _sidecar(model, keras_sha256, spec, head, tmp, session, exporter, diff, time.perf_counter() - start)
        meta["onnx_file"] = onnx_path.name
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
        for written in (tmp, tmp_meta):  # mkstemp's 0600: readable like the model files beside it
            os.chmod(written, 0o644)
        os.replace(tmp, onnx_path)  # the onnx first: a sidecar never points at a missing file
        os.replace(tmp_meta, meta_path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
    log.info("exported %s (%s) to %s in %.1f s (|dp| = %.1e)", model.name, spec.label, onnx_path,
             time.perf_counter() - start, diff)
    return meta


def _sidecar(model: keras.Model, keras_sha256: str, spec: HeatmapSpec, head: Head | None, onnx_file: Path,
             session: onnxruntime.InferenceSession, exporter: str, diff: float, seconds: float) -> dict:
    """The JSON sidecar of a checked export: what loading verifies, and how it was made."""
    from xray_ai.explain.gradcam import find_target_layer

    outputs = session.get_outputs()
    return {
        "format": EXPORT_FORMAT,
        "keras_sha256": keras_sha256,
        "onnx_sha256": file_sha256(onnx_file),
        "heatmap": {"method": spec.method, "layers": list(spec.layers)},
        "head_sha256": head.digest() if head is not None else None,
        "target_layer": head.target_layer if head is not None else "+".join(spec.layers),
        "feature_shape": list(head.feature_shape) if head is not None else None,
        "pooled_layer": find_target_layer(model),
        "input_shape": list(model.inputs[0].shape[1:]),
        "output_shapes": [list(o.shape[1:]) for o in outputs],
        "model_name": model.name,
        "input_name": session.get_inputs()[0].name,
        "output_names": [o.name for o in outputs],
        "xray_ai_version": __version__,
        "exporter": exporter,
        "check_max_probability_diff": diff,
        "export_seconds": round(seconds, 2),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
