"""ONNX Runtime backend: probability and an exact heatmap from one ONNX Runtime pass.

An export (built by serving.onnx_export) returns the pooled feature map (for the input
check), one raw map per heatmap layer and the probability: last-layer Grad-CAM from the
head's closed-form backward product (serving.head), or, for a registry `heatmap` setting at
finer layers, each layer's CAM from the backward pass through the network's tail written
into the graph (serving.gradient_ops). numpy then fuses the layers' maps
(explain.cam_math.fuse_maps) and scales them to [0, 1].

Two places an export may come from:

- **Shipped beside the model** (`models/<id>.onnx`), pinned by the registry entry's `onnx`
  field (path, sha256, the `.keras` sha256 it was made from, its heatmap setting and
  shapes): `load_pinned` verifies the `.keras` and ONNX files' sha256 against the registry
  (the same trust as the model file itself; the export reads its large weights from that
  `.keras` file: serving.model_file_weights) and opens the session *without importing
  keras or TensorFlow*, so the first analysis of a fresh install takes an ONNX session's
  start, not TensorFlow's. `python -m xray_ai export-onnx --ship MODEL_ID` writes one.
- **The per-user cache** (serving.settings.cache_dir), keyed by the `.keras` file's sha256
  (and the heatmap setting): `<cache>/<sha256>[.<variant>].onnx` and a JSON sidecar.
  `load_export` verifies the sidecar, the ONNX file's sha256, and then that the export was
  made from this very model file, checked against the model rather than the sidecar (which
  whoever replaces the export can rewrite): serving.export_check. This needs the keras
  model, so TensorFlow.

Either declines with a reason (the caller then serves TensorFlow), logged as a WARNING when
an export exists but is refused, so the CLI shows it on stderr. Nothing here exports
implicitly; `python -m xray_ai export-onnx` builds exports.

This module imports neither tensorflow nor onnxruntime at import time.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xray_ai.explain.cam_math import HeatmapSpec
from xray_ai.serving.artifacts import file_sha256, onnx_export_paths
from xray_ai.serving.export_check import check_bound
from xray_ai.serving.head import Head, UnsupportedHead, detect_head
from xray_ai.serving.onnx_export import EXPORT_FORMAT, check_against_tensorflow, export_to, variant_name
from xray_ai.serving.onnx_session import BACKEND_NAME, OnnxGradCam, check_session_shapes, open_session
from xray_ai.serving.pinned import pinned_export
from xray_ai.serving.settings import cache_dir
from xray_ai.serving.verify import check_model_file

if TYPE_CHECKING:
    import keras

    from xray_ai.registry import ModelEntry

__all__ = [
    "BACKEND_NAME",
    "EXPORT_FORMAT",
    "OnnxGradCam",
    "check_session_shapes",
    "export_model",
    "export_paths",
    "export_stamp",
    "load_export",
    "load_pinned",
    "open_session",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- cache


def export_paths(keras_sha256: str, directory: str | Path | None = None,
                 spec: HeatmapSpec | None = None) -> tuple[Path, Path]:
    """(onnx file, JSON sidecar) for the `.keras` file with this sha256 and heatmap setting,
    in `directory` (default: the cache, `settings.cache_dir()`)."""
    root = Path(directory) if directory is not None else cache_dir()
    return onnx_export_paths(keras_sha256, root, variant_name(spec))


def export_stamp(keras_sha256: str, directory: str | Path | None = None,
                 spec: HeatmapSpec | None = None) -> tuple | None:
    """Identity of an export for cache keys, so that a new or removed export is picked up:
    (size, mtime) of its sidecar, None while there is none.

    The sidecar alone: every export replaces it, after the ONNX file, and this runs on every
    analysis. An ONNX file replaced by hand with no new sidecar is noticed at the next load,
    which verifies its sha256; until then the session already open keeps serving the
    verified model it read.
    """
    try:
        st = os.stat(export_paths(keras_sha256, directory, spec)[1])
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------- loading


def load_export(
    model: keras.Model, keras_sha256: str, directory: str | Path | None = None, head: Head | None = None,
    spec: HeatmapSpec | None = None,
) -> tuple[OnnxGradCam | None, str | None]:
    """The ONNX Runtime analyzer for `model` and heatmap setting `spec` (default: last-layer
    Grad-CAM) if a verified export is in the cache `directory`, else (None, why).

    Checks: the sidecar names this `.keras` sha256, this export format and setting (and,
    for the closed form, these head weights and layer); the ONNX file's sha256 matches the
    sidecar; the session takes just the image and returns what the setting needs; the
    export was made from `model` itself (closed form: `export_check.check_bound`; gradients:
    its maps and probability on the fixed probe agree with TensorFlow's). Never raises for a
    bad export: the reason says what was wrong; an export that exists but is refused is
    logged as a WARNING.
    """
    spec = spec or HeatmapSpec.default()
    if spec.is_default:
        try:
            head = head or detect_head(model)
        except UnsupportedHead as exc:
            return None, f"head not supported by the ONNX Runtime backend: {exc}"
    onnx_path, meta_path = export_paths(keras_sha256, directory, spec)
    if not onnx_path.is_file():
        return None, f"no ONNX export yet ({onnx_path}); `python -m xray_ai export-onnx` builds it"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        return _refused(f"ONNX export sidecar {meta_path.name} unreadable ({type(exc).__name__}: {exc})")
    expected: dict[str, Any] = {"format": EXPORT_FORMAT, "keras_sha256": keras_sha256,
                                "heatmap": {"method": spec.method, "layers": list(spec.layers)}}
    if spec.is_default:
        expected.update(head_sha256=head.digest(), target_layer=head.target_layer)
    meta.setdefault("heatmap", {"method": "gradcam", "layers": []})  # exports from before settings existed
    for field, want in expected.items():
        if meta.get(field) != want:
            return _refused(f"ONNX export {onnx_path.name}: sidecar {field} is {meta.get(field)!r}, expected {want!r}")
    analyzer, problem = _open_verified(onnx_path, meta.get("onnx_sha256"), tuple(model.inputs[0].shape[1:]),
                                       None, spec, head)
    if problem:
        return _refused(f"ONNX export {onnx_path.name}: {problem}")
    if spec.is_default:
        problem = check_bound(analyzer, onnx_path, model, head)
    else:
        problem = check_against_tensorflow(model, spec, None, analyzer)[0]  # the export's own check
    if problem:
        return _refused(f"ONNX export {onnx_path.name} was not made from this model file: {problem}")
    return analyzer, None


def load_pinned(entry: ModelEntry, base_dir: Path, spec: HeatmapSpec | None = None
                ) -> tuple[OnnxGradCam | None, str | None]:
    """The analyzer of the export the registry entry pins (`onnx` field), opened without
    keras or TensorFlow, or (None, why not; None when the entry pins none).

    Verified: the field is well formed; the export computes `spec` (the entry's heatmap
    setting); it was made from the `.keras` file the entry names (its recorded sha256 is the
    entry's, and the `.keras` file on disk still has it: a missing or changed model file
    means the placeholder, whatever the export); the ONNX file is inside the registry's
    folder and has the pinned sha256; the session's input and outputs have the pinned shapes.
    """
    spec = spec or HeatmapSpec.default()
    try:
        found = pinned_export(entry, base_dir, EXPORT_FORMAT, (("heatmap", Mapping), ("output_shapes", list)))
    except ValueError as exc:
        return _refused(f"model {entry.id}: {exc}")
    if found is None:
        return None, None
    pinned, onnx_path = found
    computes = {"method": pinned["heatmap"].get("method"), "layers": list(pinned["heatmap"].get("layers", []))}
    if computes != {"method": spec.method, "layers": list(spec.layers)}:
        return None, (f"the shipped export computes {computes}, the entry's heatmap setting is "
                      f"{spec.label}; `python -m xray_ai export-onnx --ship {entry.id}` rebuilds it")
    problem = check_model_file(entry, base_dir)  # sha256 cached per file version, as every load checks it
    if problem:
        return None, problem
    analyzer, problem = _open_verified(onnx_path, pinned["sha256"], tuple(entry.input.shape),
                                       pinned["output_shapes"], spec, None, pinned.get("target_layer"))
    if problem:
        return _refused(f"model {entry.id}: shipped export {onnx_path.name}: {problem}")
    return analyzer, None


def _open_verified(onnx_path: Path, want_sha256: Any, input_shape: tuple[int, ...], output_shapes: list | None,
                   spec: HeatmapSpec, head: Head | None, target_layer: str | None = None
                   ) -> tuple[OnnxGradCam | None, str | None]:
    """Open the session after its sha256 check, and check its shapes: (analyzer, None) or (None, why)."""
    actual = file_sha256(onnx_path)
    if actual != want_sha256:
        return None, (f"it fails its check: sha256 {actual[:12]}..., expected {str(want_sha256)[:12]}... "
                      "(file replaced or damaged)")
    try:
        session = open_session(onnx_path)
    except ImportError as exc:
        return None, f"onnxruntime is not installed ({exc})"
    except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
        return None, f"ONNX Runtime cannot open it ({type(exc).__name__}: {exc})"
    problem = check_session_shapes(session, input_shape, output_shapes)
    if problem:
        return None, problem
    n_maps = len(session.get_outputs()) - 2
    if n_maps != max(len(spec.layers), 1):
        return None, f"it returns {n_maps} maps, the heatmap setting {spec.label} needs {max(len(spec.layers), 1)}"
    return OnnxGradCam(session, onnx_path, spec=spec, head=head, target_layer=target_layer), None


def _refused(reason: str) -> tuple[None, str]:
    """An export exists but is not served: a WARNING (the CLI prints it on stderr) and the reason."""
    log.warning("%s; serving TensorFlow instead", reason)
    return None, reason


def export_model(model: keras.Model, keras_sha256: str, directory: str | Path | None = None,
                 spec: HeatmapSpec | None = None) -> Path:
    """Export `model` (computing `spec`'s map) into the cache, checked and atomic
    (serving.onnx_export.export_to). Returns the `.onnx` path."""
    onnx_path, meta_path = export_paths(keras_sha256, directory, spec)
    export_to(model, keras_sha256, onnx_path, meta_path, spec)
    return onnx_path
