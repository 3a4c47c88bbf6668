"""Serving a measurement model: its segmentation network's masks and pooled features for a
batch, on ONNX Runtime from the export shipped beside it (pinned in the registry entry's
`onnx` field, opened without keras or TensorFlow) or on TensorFlow.

The network's contract is xray_ai.measurement.network's: outputs "masks" (N, S, S, 2:
heart, thorax) and "features" (N, K). Its export is the plain conversion of the network (no
gradients: a measurement shows outlines, not a heatmap), checked at export time against
TensorFlow on a fixed probe batch (masks and features within EXPORT_TOLERANCE).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xray_ai.registry import ModelEntry
from xray_ai.serving.artifacts import file_sha256
from xray_ai.serving.model_file_weights import read_weights_from_model_file
from xray_ai.serving.pinned import pinned_export
from xray_ai.serving.verify import check_model_file

__all__ = ["SEGMENTATION_METHOD", "EXPORT_FORMAT", "EXPORT_TOLERANCE", "MeasurementOutput", "KerasSegmenter",
           "OnnxSegmenter", "export_segmenter", "load_pinned_segmenter", "pin_json"]

log = logging.getLogger(__name__)

SEGMENTATION_METHOD = "segmentation (heart and thorax outlines)"
EXPORT_FORMAT = "segmentation-1"
EXPORT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class MeasurementOutput:
    """masks (N, S, S, 2) float32 in [0, 1]; pooled_features (N, K) float32."""

    masks: np.ndarray
    pooled_features: np.ndarray


class KerasSegmenter:
    """The network on TensorFlow."""

    backend = "tensorflow"
    method = SEGMENTATION_METHOD
    target_layer = None

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, batch: np.ndarray) -> MeasurementOutput:
        from xray_ai.measurement.network import OUTPUT_FEATURES, OUTPUT_MASKS

        out = self.model(batch, training=False)
        return MeasurementOutput(np.asarray(out[OUTPUT_MASKS], np.float32), np.asarray(out[OUTPUT_FEATURES], np.float32))

    def warm_up(self) -> None:
        self(np.zeros((1, *self.model.inputs[0].shape[1:]), np.float32))


class OnnxSegmenter:
    """The network's export on ONNX Runtime; outputs told apart by rank (masks 4-D, features 2-D)."""

    backend = "onnxruntime"
    method = SEGMENTATION_METHOD
    target_layer = None

    def __init__(self, session, onnx_path: Path) -> None:
        self.session, self.onnx_path = session, Path(onnx_path)
        self._input = session.get_inputs()[0].name
        outputs = session.get_outputs()
        by_rank = {len(o.shape): o.name for o in outputs}
        if len(outputs) != 2 or set(by_rank) != {2, 4}:
            raise ValueError(f"{self.onnx_path.name}: expected a 4-D masks and a 2-D features output, got "
                             f"{[(o.name, o.shape) for o in outputs]}")
        self._names = [by_rank[4], by_rank[2]]
        self.input_shape = tuple(session.get_inputs()[0].shape[1:])

    def __call__(self, batch: np.ndarray) -> MeasurementOutput:
        masks, features = self.session.run(self._names, {self._input: np.ascontiguousarray(batch, np.float32)})
        return MeasurementOutput(masks, features)

    def warm_up(self) -> None:
        self(np.zeros((1, *self.input_shape), np.float32))


def _probe(shape: tuple[int, ...]) -> np.ndarray:
    """A fixed batch the export is checked on: a smooth ramp and noise, in [0, 1]."""
    rng = np.random.default_rng(0)
    h, w, c = shape
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * np.linspace(1, 0, h, dtype=np.float32)[:, None, None]
    return np.stack([np.broadcast_to(ramp, (h, w, c)), rng.uniform(0, 1, (h, w, c)).astype(np.float32)])


def export_segmenter(model, keras_sha256: str, onnx_path: Path, *, weights_from: Path | None = None) -> dict[str, Any]:
    """Convert the network to `onnx_path` (atomically: a temporary file, then rename), check
    it against TensorFlow, and return what the registry pins of it (`pin_json` adds the
    path). weights_from: the `.keras` file beside it that `model` was loaded from, to read
    the large weights from (serving.model_file_weights). RuntimeError when the conversion
    fails or disagrees."""
    from xray_ai.serving.onnx_session import open_session

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=onnx_path.parent, prefix=f".{keras_sha256[:12]}-", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        probe = _probe(tuple(model.inputs[0].shape[1:]))
        try:
            model(probe[:1])  # keras' export needs a called model
            model.export(str(tmp), format="onnx", verbose=False)
            if weights_from is not None:
                read_weights_from_model_file(tmp, weights_from)
            segmenter = OnnxSegmenter(open_session(tmp), tmp)
        except Exception as exc:  # tf2onnx and onnxruntime raise their own types
            raise RuntimeError(f"ONNX conversion failed ({type(exc).__name__}: {exc})") from exc
        ours, theirs = segmenter(probe), KerasSegmenter(model)(probe)
        diff = max(float(np.abs(ours.masks - theirs.masks).max()),
                   float(np.abs(ours.pooled_features - theirs.pooled_features).max()))
        if not diff <= EXPORT_TOLERANCE:
            raise RuntimeError(f"the export disagrees with TensorFlow by {diff:.2e} (tolerance {EXPORT_TOLERANCE:g})")
        os.chmod(tmp, 0o644)
        os.replace(tmp, onnx_path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s to %s (max |diff| %.1e)", model.name, onnx_path, diff)
    return {"sha256": file_sha256(onnx_path), "keras_sha256": keras_sha256, "format": EXPORT_FORMAT,
            "check_max_abs_diff": diff, "created": _dt.date.today().isoformat()}


def pin_json(meta: dict, onnx_path: Path, base_dir: Path) -> dict:
    """The registry's `onnx` field for an export written by export_segmenter."""
    return {"path": onnx_path.resolve().relative_to(base_dir.resolve()).as_posix(), **meta}


def load_pinned_segmenter(entry: ModelEntry, base_dir: Path) -> tuple[OnnxSegmenter | None, str | None]:
    """The entry's pinned export on ONNX Runtime, or (None, why not; None when it pins none).
    Verified: made from the `.keras` file the entry names (whose sha256 on disk is still the
    entry's: a changed model file means the placeholder, whatever the export), the ONNX file
    inside the registry's folder with the pinned sha256, the input shape the entry says."""
    try:
        found = pinned_export(entry, base_dir, EXPORT_FORMAT)
    except ValueError as exc:
        return None, f"model {entry.id}: {exc}"
    if found is None:
        return None, None
    pinned, onnx_path = found
    problem = check_model_file(entry, base_dir)  # sha256 cached per file version, as every load checks it
    if problem:
        return None, f"model {entry.id}: {problem}"
    if file_sha256(onnx_path) != pinned["sha256"]:
        return None, f"model {entry.id}: the shipped export {onnx_path.name} was changed (its sha256 is not the pinned one)"
    from xray_ai.serving.onnx_session import open_session

    try:
        segmenter = OnnxSegmenter(open_session(onnx_path), onnx_path)
    except Exception as exc:  # onnxruntime's own types for a graph it refuses
        return None, f"model {entry.id}: ONNX Runtime cannot use {onnx_path.name} ({type(exc).__name__}: {exc})"
    if segmenter.input_shape != entry.input.shape:
        return None, f"model {entry.id}: the export takes {segmenter.input_shape}, the entry says {entry.input.shape}"
    return segmenter, None
