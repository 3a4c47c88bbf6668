"""Is an ONNX export made from this `.keras` file? Checked against the model, not the sidecar.

The sidecar beside an export records digests, but whoever replaces the export can rewrite
them. So `check_bound` holds the export to the keras model itself (loaded from the file the
registry's sha256 verified): the graph must hold the head constants computed from the
model's weights (`head_constants`: byte for byte, or for a product TensorFlow folded within
1e-5), and on a fixed probe batch its probability, Grad-CAM maps and pooled features must
agree with keras (`disagreement`, also the export's own check). Another model's export
fails the first; a changed backbone weight that changes the results fails the second.
Used by `xray_ai.serving.onnx_backend`; keras and onnx are imported when a check runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xray_ai.serving.head import Head, head_tensors

if TYPE_CHECKING:
    import keras

__all__ = ["CHECK_TOLERANCE", "check_bound", "disagreement", "head_constants"]

CHECK_TOLERANCE = 1e-4  # |p_onnx - p_keras| allowed when an export is checked


def head_constants(head: Head) -> list[tuple[str, list[np.ndarray]]]:
    """The arrays `grad_cam_layer` writes into the graph, computed here from the keras
    model's own weights, each with the forms TensorFlow's constant folding may leave of it:
    the logit's kernel as a row (times the transposed kernels of the linear dense layers
    right before it, which fold into it; and times 1/(h w) when no ReLU mask intervenes at
    all), then the transposed, batch-norm-folded kernel of each remaining dense layer."""
    layers, out_kernel, _ = head.folded
    h, w, _ = head.feature_shape
    row = np.ascontiguousarray(out_kernel[None, :], np.float32)
    i = len(layers) - 1
    while i >= 0 and not layers[i][3]:  # no mask between: the product is a constant
        row = np.ascontiguousarray(row @ layers[i][1], np.float32)
        i -= 1
    forms = [row]
    if i < 0:  # nothing depends on the input: the 1 / (h w) scaling folds in too
        forms += [row * np.float32(1.0 / (h * w)), row / np.float32(h * w)]
    wanted = [("the logit's kernel", forms)]
    wanted += [(f"dense layer {j + 1}'s kernel", [np.ascontiguousarray(layers[j][1], np.float32)])
               for j in range(i, -1, -1)]
    return wanted


def _graph_arrays(onnx_path: Path) -> dict[int, list[np.ndarray]]:
    """Every float32 initializer and Constant of the ONNX graph, flattened, by size."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    tensors = list(graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            tensors.extend(a.t for a in node.attribute if a.name == "value")
    found: dict[int, list[np.ndarray]] = {}
    for tensor in tensors:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            array = np.ascontiguousarray(numpy_helper.to_array(tensor), np.float32).ravel()
            found.setdefault(array.size, []).append(array)
    return found


def _holds(present: dict[int, list[np.ndarray]], forms: list[np.ndarray]) -> bool:
    """Whether one of `forms` is in the graph: byte for byte, or (for a product TensorFlow
    folded with its own float32 arithmetic) within 1e-5 relative, far below what changing
    one weight's exponent or leading mantissa bits does."""
    for form in forms:
        flat = form.ravel()
        for array in present.get(flat.size, ()):
            if array.tobytes() == flat.tobytes():
                return True
            scale = float(np.max(np.abs(flat))) or 1.0
            if float(np.max(np.abs(array.astype(np.float64) - flat))) <= 1e-5 * scale:
                return True
    return False


def check_bound(analyzer: Any, onnx_path: Path, model: keras.Model, head: Head) -> str | None:
    """Why the export was not made from `model` (the verified `.keras` file), or None.

    Checked against the model itself, not the sidecar (which anyone replacing the export can
    rewrite): (1) the graph holds the head constants computed from the model's weights
    (`head_constants`, `_holds`), so another model's export (other head weights) is
    refused; (2) on a fixed probe batch its probability, Grad-CAM maps and pooled features
    agree with keras running this model (`disagreement`, the export's own check), so a
    changed backbone weight that changes the results is refused too.
    """
    try:
        present = _graph_arrays(onnx_path)
    except Exception as exc:  # onnx raises its own types for a damaged protobuf
        return f"its graph cannot be read ({type(exc).__name__}: {exc})"
    for what, forms in head_constants(head):
        if not _holds(present, forms):
            return (f"it does not hold this model's head weights ({what}, shape {forms[0].shape}): "
                    "an export of another model, or its weights were changed")
    shape = tuple(model.inputs[0].shape[1:])
    probe = np.random.default_rng(0).uniform(0.0, 1.0, (2, *shape)).astype(np.float32)
    try:
        problem = disagreement(analyzer, model, head, probe)
    except Exception as exc:  # a graph that opens but cannot run this input
        return f"it cannot be run ({type(exc).__name__}: {exc})"
    return f"its results differ from this model's: {problem}" if problem else None


def disagreement(analyzer: Any, model: keras.Model, head: Head, probe: np.ndarray) -> str | None:
    """How ONNX Runtime's results on `probe` differ from keras' (probability beyond 1e-4;
    Grad-CAM maps or pooled features beyond 1e-3 relative), or None when they agree."""
    import keras

    pooled, cams, p_onnx = analyzer.forward(probe)
    p_keras = np.asarray(model(probe, training=False)).reshape(-1)
    diff = float(np.max(np.abs(p_onnx.reshape(-1) - p_keras)))
    if not diff <= CHECK_TOLERANCE:
        return f"|p_onnx - p_keras| = {diff:.2e} (allowed {CHECK_TOLERANCE:.0e})"
    features = np.asarray(keras.Model(model.inputs[0], head_tensors(model)[0])(probe, training=False))
    for name, ours, theirs in (("Grad-CAM maps", cams, head.raw_cam(features)),
                               ("pooled features", pooled, features.mean(axis=(1, 2)))):
        rel = float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-12))
        if not rel <= 1e-3:
            return f"{name} differ by {rel:.2e} (relative; allowed 1e-3)"
    return None
