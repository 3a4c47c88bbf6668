"""ONNX Runtime backend: probability and exact Grad-CAM from one forward pass, no second pass.

The whole model is exported to ONNX together with the closed-form backward product of its
head (serving.head, which says why it is exact): the export returns the pooled feature map
(for the input check), the raw Grad-CAM map before its ReLU (sum_k A_k g_k / (h w)) and the
probability. One ONNX Runtime pass gives them all; numpy only scales the map to [0, 1].
A model whose head has no closed form (`detect_head` says why) keeps the TensorFlow path.

The export lives outside git, in a per-user cache (serving.settings.cache_dir) keyed by the
`.keras` file's sha256 (serving.artifacts.onnx_export_paths): `<cache>/<sha256>.onnx` and a
JSON sidecar that records the ONNX file's own sha256, the head weights' digest and the layer
names. Loading verifies all of them, and then that the export was made from this very model
file, checked against the model rather than the sidecar (which whoever replaces the export
can rewrite): the graph must hold the head constants computed from the model's weights,
byte for byte, and its results on a fixed probe must agree with keras'. Otherwise it
declines with a reason (the caller then serves TensorFlow), logged as a WARNING when an
export exists but is refused, so the CLI shows it on stderr. `python -m xray_ai export-onnx` builds exports ahead of time; nothing
here exports implicitly.

This module imports neither tensorflow nor onnxruntime at import time: keras is imported
by the functions that inspect or export a model, onnxruntime when a session is opened.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xray_ai.explain.base import GradCamOutput, normalise_map
from xray_ai.serving.artifacts import file_sha256, onnx_export_paths
from xray_ai.serving.export_check import CHECK_TOLERANCE, check_bound, disagreement
from xray_ai.serving.head import Head, UnsupportedHead, detect_head, grad_cam_layer, head_tensors
from xray_ai.serving.settings import cache_dir, session_threads
from xray_ai.version import __version__

if TYPE_CHECKING:
    import keras
    import onnxruntime

__all__ = [
    "BACKEND_NAME",
    "EXPORT_FORMAT",
    "OnnxGradCam",
    "export_model",
    "export_paths",
    "export_stamp",
    "load_export",
    "open_session",
]

log = logging.getLogger(__name__)

BACKEND_NAME = "onnxruntime"
# Bump when the export's layout or meaning changes: older exports are then ignored.
# 1: the feature map only. 2: feature map, each ReLU layer's output, probability.
# 3: pooled features, raw Grad-CAM map (the backward product in the graph), probability.
EXPORT_FORMAT = 3
_CHECK_TOLERANCE = CHECK_TOLERANCE


# ---------------------------------------------------------------------------- cache


def export_paths(keras_sha256: str, directory: str | Path | None = None) -> tuple[Path, Path]:
    """(onnx file, JSON sidecar) for the `.keras` file with this sha256, in `directory`
    (default: the cache, `settings.cache_dir()`)."""
    return onnx_export_paths(keras_sha256, Path(directory) if directory is not None else cache_dir())


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


# ---------------------------------------------------------------------------- analyzer


class OnnxGradCam:
    """Probability and exact Grad-CAM from one ONNX Runtime pass plus numpy; the same call
    contract as xray_ai.explain.gradcam.GradCam (batch in, GradCamOutput out): both are a
    serving.analyzer.Analyzer.

    One session per loaded model, shared by every app session: runs are serialised by a
    lock, because one run already uses every core (intra-op threads = cores) and two at
    once would only make their thread pools fight over them.
    """

    method: str = "gradcam"
    backend: str = BACKEND_NAME
    fallback_reason: str | None = None  # the closed form always gives Grad-CAM

    def __init__(self, session: onnxruntime.InferenceSession, head: Head, onnx_path: Path):
        self.session = session
        self.head = head
        self.onnx_path = onnx_path
        self.target_layer: str | None = head.target_layer
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


def open_session(path: str | Path) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session configured for this machine: intra-op threads = cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = session_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_export(
    model: keras.Model, keras_sha256: str, directory: str | Path | None = None, head: Head | None = None
) -> tuple[OnnxGradCam | None, str | None]:
    """The ONNX Runtime analyzer for `model` if a verified export exists, else (None, why).

    Checks: the head has the closed form; the export and its sidecar exist; the sidecar
    names this `.keras` sha256, this export format, these head weights and layer; the ONNX
    file's sha256 matches the sidecar; the session takes just the image and returns the
    feature map; the export was made from `model` itself (`export_check.check_bound`). Never raises for
    a bad export: the reason says what was wrong, and an export that exists but is refused
    is logged as a WARNING.
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
        return _refused(f"ONNX export sidecar {meta_path.name} unreadable ({type(exc).__name__}: {exc})")
    expected = {
        "format": EXPORT_FORMAT,
        "keras_sha256": keras_sha256,
        "head_sha256": head.digest(),
        "target_layer": head.target_layer,
    }
    for field, want in expected.items():
        if meta.get(field) != want:
            return _refused(f"ONNX export {onnx_path.name}: sidecar {field} is {meta.get(field)!r}, expected {want!r}")
    actual = file_sha256(onnx_path)
    if actual != meta.get("onnx_sha256"):
        return _refused(
            f"ONNX export {onnx_path.name} fails its check: sha256 {actual[:12]}..., the sidecar records "
            f"{str(meta.get('onnx_sha256'))[:12]}... (file replaced or damaged)"
        )
    try:
        session = open_session(onnx_path)
    except ImportError as exc:
        return _refused(f"onnxruntime is not installed ({exc})")
    except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
        return _refused(f"ONNX Runtime cannot open {onnx_path.name} ({type(exc).__name__}: {exc})")
    problem = _check_session(session, model, head)
    if problem:
        return _refused(f"ONNX export {onnx_path.name}: {problem}")
    analyzer = OnnxGradCam(session, head, onnx_path)
    problem = check_bound(analyzer, onnx_path, model, head)
    if problem:
        return _refused(f"ONNX export {onnx_path.name} was not made from this model file: {problem}")
    return analyzer, None


def _refused(reason: str) -> tuple[None, str]:
    """An export exists but is not served: a WARNING (the CLI prints it on stderr) and the reason."""
    log.warning("%s; serving TensorFlow instead", reason)
    return None, reason


def _check_session(session: onnxruntime.InferenceSession, model: keras.Model, head: Head) -> str | None:
    """Why the session does not fit `model` and `head` (inputs, output shapes), or None."""
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


def _export_outputs(model: keras.Model, head: Head) -> list[Any]:
    """What the export returns: the pooled features (N, K), the raw Grad-CAM map (N, h, w;
    before the ReLU) and the model's output (the probability, N x 1)."""
    features, pooled, relu_outputs = head_tensors(model)
    cam = grad_cam_layer(head)([features, *relu_outputs, model.outputs[0]])
    return [pooled, cam, model.outputs[0]]


def export_model(model: keras.Model, keras_sha256: str, directory: str | Path | None = None) -> Path:
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
        # the graph's probability must be keras', its Grad-CAM the numpy head's on keras' feature map
        problem = disagreement(OnnxGradCam(session, head, tmp), model, head, probe)
        if problem:
            raise RuntimeError(f"exported graph disagrees with the model: {problem}")
        p_onnx = OnnxGradCam(session, head, tmp).forward(probe)[2]
        diff = float(np.max(np.abs(p_onnx.reshape(-1) - np.asarray(model(probe, training=False)).reshape(-1))))
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


def _sidecar(model: keras.Model, keras_sha256: str, head: Head, onnx_file: Path,
             session: onnxruntime.InferenceSession, diff: float, seconds: float) -> dict:
    """The JSON sidecar of a checked export: what `load_export` verifies, and how it was made."""
    import keras

    try:  # tf2onnx only names the exporter here; keras' export may run without it
        import tf2onnx

        exporter = f"keras {keras.__version__} export (tf2onnx {tf2onnx.__version__})"
    except ImportError:
        exporter = f"keras {keras.__version__} export"
    return {
        "format": EXPORT_FORMAT,
        "keras_sha256": keras_sha256,
        "onnx_sha256": file_sha256(onnx_file),
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
