"""analyze(): the one pipeline that the app, the CLI and the benchmarks call.

images (the views of one study) -> model-ready batch -> one compiled pass giving each
view's probability and Grad-CAM -> the study probability (mean of the views, as the MURA
paper scores studies) -> an AnalysisResult that carries its own provenance.
"""

from __future__ import annotations

import datetime as _dt
import threading
from typing import Callable, Sequence

import numpy as np

from .cam import METHODS
from .imaging import XRay
from .manager import ModelManager
from .preprocessing import prepare_batch
from .result import AnalysisResult, ViewResult

__all__ = ["analyze", "default_manager", "MAX_VIEWS"]

MAX_VIEWS = 16  # views per study; more is almost certainly a wrong upload
_BATCH = 8  # views per compiled call: bounds memory for large studies

_default_manager: ModelManager | None = None
_default_lock = threading.Lock()


def default_manager() -> ModelManager:
    """A process-wide ModelManager on the default registry (created on first use)."""
    global _default_manager
    with _default_lock:
        if _default_manager is None:
            _default_manager = ModelManager()
        return _default_manager


def analyze(
    images: XRay | Sequence[XRay],
    condition: str | None,
    manager: ModelManager | None = None,
    model_id: str | None = None,
    method: str = "gradcam",
    progress: Callable[[float], None] | None = None,
) -> AnalysisResult:
    """Score one study and explain it.

    Args:
        images: one XRay, or several: the views of one study.
        condition: a registry condition id; may be None when `model_id` is given.
        manager: the ModelManager to use (default: the process-wide one).
        model_id: a specific registered model instead of the condition's active one.
        method: the heatmap method, one of xray_ai.explain.METHODS. Grad-CAM comes from the
            same compiled pass as the probability; the others are computed afterwards on the
            keras model (TensorFlow), view by view.
        progress: called with 0..1 while a slow method (LIME) runs.

    Returns:
        AnalysisResult: study probability (mean of the views), decision at the entry's
        threshold, per-view probabilities and heatmaps (float32 2-D in [0, 1]), provenance.

    Raises:
        ValueError: no images or too many; RegistryError (a ValueError): unknown condition
        or model id, or an invalid registry.
    """
    if method not in METHODS:
        raise ValueError(f"unknown heatmap method {method!r}; valid: {', '.join(METHODS)}")
    views = [images] if isinstance(images, XRay) else list(images)
    if not views:
        raise ValueError("no images to analyse")
    if len(views) > MAX_VIEWS:
        raise ValueError(f"{len(views)} images given; one study has at most {MAX_VIEWS} views")
    manager = manager or default_manager()
    loaded = manager.get(condition=condition, model_id=model_id)
    entry = loaded.entry
    registry_condition = manager.registry.condition(entry.condition)

    probabilities: list[float] = []
    heatmaps: list[np.ndarray] = []
    flags: list[str | None] = []
    heatmap_method, target_layer = loaded.heatmap_method, loaded.target_layer
    for start in range(0, len(views), _BATCH):
        chunk = views[start : start + _BATCH]
        batch = prepare_batch([v.pixels for v in chunk], entry.input, entry.preprocessing)
        out = loaded.analyzer(batch)
        probabilities.extend(float(p) for p in out.probabilities)
        if method == "gradcam":
            heatmaps.extend(out.heatmaps)
            flags.extend(out.flags)
        else:
            from .explain import explainer_for  # tensorflow; only for the non-default methods

            explainer = explainer_for(loaded.model)
            for k in range(len(chunk)):
                done = (start + k) / len(views)
                step = (lambda f, done=done: progress(done + f / len(views))) if progress else None
                explanation = explainer.explain(batch[k : k + 1], method, step)
                heatmaps.append(explanation.heatmap)
                flags.append(explanation.flag)
                heatmap_method, target_layer = explanation.method, explanation.target_layer

    warnings: list[str] = []
    if loaded.placeholder:
        warnings.append(f"PLACEHOLDER MODEL: {loaded.placeholder_reason}. The result has no meaning.")
    if entry.trained_on.synthetic:
        warnings.append(
            f"Model {entry.id} was trained on synthetic data ({entry.trained_on.describe()}); "
            "its output carries no clinical meaning."
        )
    if manager.backend == "onnx" and loaded.backend != "onnxruntime":
        warnings.append(f"ONNX Runtime was requested but TensorFlow computed this result: {loaded.backend_reason}")
    for view in views:
        warnings.extend(f"{view.filename or 'image'}: {w}" for w in view.warnings)
    for view, flag in zip(views, flags):
        if flag:
            warnings.append(f"{view.filename or 'image'}: heatmap {flag}")

    return AnalysisResult(
        condition=entry.condition,
        condition_name=registry_condition.name,
        positive_label=registry_condition.positive_label,
        negative_label=registry_condition.negative_label,
        model_id=entry.id,
        model_version=entry.version,
        architecture="placeholder CNN (untrained)" if loaded.placeholder else entry.architecture,
        profile=entry.profile,
        sha256=None if loaded.placeholder else entry.sha256,
        trained_on="nothing (untrained placeholder)" if loaded.placeholder else entry.trained_on.describe(),
        intended_use=entry.intended_use,
        threshold=entry.threshold,
        threshold_method=entry.threshold_method,
        probability=float(np.mean(probabilities)),
        placeholder=loaded.placeholder,
        placeholder_reason=loaded.placeholder_reason,
        heatmap_method=heatmap_method,
        target_layer=target_layer,
        views=tuple(ViewResult(v, p, h, f) for v, p, h, f in zip(views, probabilities, heatmaps, flags)),
        warnings=tuple(warnings),
        backend=(loaded.backend if method == "gradcam" or loaded.backend == "tensorflow"
                 else f"{loaded.backend} (probability), tensorflow ({method})"),
        synthetic=entry.trained_on.synthetic,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        metrics=dict(entry.metrics),
    )
