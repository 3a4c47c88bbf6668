"""The ONNX Runtime session of an export and the analyzer around it (serving.onnx_backend
loads and verifies exports, serving.onnx_export builds them; both use these).

numpy only at import; onnxruntime is imported when a session is opened.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xray_ai.explain.base import GradCamOutput, normalise_map
from xray_ai.explain.cam_math import HeatmapSpec, fuse_maps
from xray_ai.serving.head import Head
from xray_ai.serving.settings import session_threads

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["BACKEND_NAME", "OnnxGradCam", "check_session_shapes", "open_session"]

BACKEND_NAME = "onnxruntime"


class OnnxGradCam:
    """Probability and an exact heatmap from one ONNX Runtime pass plus numpy; the same call
    contract as xray_ai.explain.gradcam.GradCam (batch in, GradCamOutput out): both are a
    serving.analyzer.Analyzer.

    One session per loaded model, shared by every app session: runs are serialised by a
    lock, because one run already uses every core (intra-op threads = cores) and two at
    once would only make their thread pools fight over them.
    """

    backend: str = BACKEND_NAME
    fallback_reason: str | None = None  # an export always computes its map

    def __init__(self, session: onnxruntime.InferenceSession, onnx_path: Path, *,
                 spec: HeatmapSpec | None = None, head: Head | None = None, target_layer: str | None = None):
        self.session = session
        self.onnx_path = onnx_path
        self.heatmap = spec or HeatmapSpec.default()
        self.head = head
        self.method: str = self.heatmap.method
        if target_layer is None:
            target_layer = head.target_layer if head is not None and self.heatmap.is_default else "+".join(self.heatmap.layers)
        self.target_layer: str | None = target_layer or None
        self._input = session.get_inputs()[0].name
        self._lock = threading.Lock()

    def forward(self, batch: np.ndarray) -> list[np.ndarray]:
        """The export's outputs for a model-ready batch: pooled features (N, K), one raw map
        per layer (N, h_i, w_i), probabilities (N, 1); float32."""
        x = np.ascontiguousarray(batch, np.float32)
        with self._lock:
            return self.session.run(None, {self._input: x})

    def __call__(self, batch: np.ndarray) -> GradCamOutput:
        """batch: float32 (N, H, W, C), model-ready. Returns GradCamOutput."""
        pooled, *maps, probabilities = self.forward(batch)
        prob = np.clip(np.nan_to_num(probabilities.reshape(-1).astype(np.float64), nan=0.5), 0.0, 1.0)
        heatmaps, flags = zip(*(normalise_map(cam) for cam in fuse_maps(maps)))
        return GradCamOutput(prob, np.stack(heatmaps), tuple(flags), self.method, self.target_layer, pooled)

    def warm_up(self) -> None:
        """One run so that ONNX Runtime's first-call allocations are not paid by a user."""
        self(np.zeros((1, *self.session.get_inputs()[0].shape[1:]), np.float32))


def open_session(path: str | Path) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session configured for this machine: intra-op threads = cores, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = session_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # No spinning: by default ONNX Runtime's threads busy-wait after each run, holding both
    # cores while this process's own Python (the Grad-CAM scaling, the result, Streamlit's
    # redraw, predict-batch's decoders) waits for them. Off, one analysis took 20 ms instead
    # of 34 (median, shipped fracture model) and predict-batch ran 0.63x the bare forward
    # instead of 0.58x (benchmarks/batch_throughput.py, MobileNetV2).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_session_shapes(session: onnxruntime.InferenceSession, input_shape: tuple[int, ...],
                         output_shapes: list[list[int]] | None = None) -> str | None:
    """Why the session does not fit: not one image input of `input_shape` (H, W, C), or
    outputs other than (pooled, map_1..map_n, probability) [or other than `output_shapes`,
    each without the batch axis]; None when it fits."""
    ins, outs = session.get_inputs(), session.get_outputs()
    if len(ins) != 1:
        return f"the session takes {len(ins)} inputs ({', '.join(i.name for i in ins)}); only the image is allowed"
    if list(ins[0].shape[1:]) != list(input_shape):
        return f"the session's input is {ins[0].shape}, the model's (N, {', '.join(map(str, input_shape))})"
    shapes = [list(o.shape[1:]) for o in outs]
    if output_shapes is not None and shapes != [list(s) for s in output_shapes]:
        return f"the session returns (N, ...) shapes {shapes}, expected {output_shapes}"
    if len(shapes) < 3 or len(shapes[0]) != 1 or shapes[-1] != [1] or any(len(m) != 2 for m in shapes[1:-1]):
        return (f"the session returns (N, ...) shapes {shapes}: expected pooled features, one 2-D map per "
                "layer, probability")
    return None
