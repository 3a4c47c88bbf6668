"""analyze()'s stage for a measurement model: each view's masks from the segmentation network
(serving.segmentation), its cardiothoracic ratio (measurement.ctr), the probability the
decision reads (a logistic calibration of the CTR fitted on the validation split, 0.5 at the
rule's limit, so that "probability >= threshold 0.5" is the clinical rule CTR >= 0.50) and
the reason a view could not be measured.

The rest (scope gate, input check, warnings, provenance) is the pipeline every model goes
through: xray_ai.analysis passes its own per-view assembly in as `view_results`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from xray_ai.images import XRay
from xray_ai.measurement.ctr import ctr_probability, measure_batch
from xray_ai.registry import ModelEntry
from xray_ai.result import ViewResult
from xray_ai.serving.forward import BATCH
from xray_ai.serving.preprocessing import prepare_batch

__all__ = ["NOT_MEASURED", "measure_views", "measured_views", "study_probability", "not_measured_reasons"]

NOT_MEASURED = "the heart or thorax outline was not found, so the cardiothoracic ratio could not be measured"


@dataclass(frozen=True)
class _Pass:
    """What analysis' per-view assembly reads of a forward pass."""

    probabilities: np.ndarray
    pooled_features: np.ndarray | None


def measure_views(loaded, views: Sequence[XRay], view_results: Callable) -> list[ViewResult]:
    """One ViewResult per view, its `measurement` set (None where an outline is missing; its
    probability is then 0.0, kept for the record, and the scope gate calls it not assessable)."""
    entry = loaded.entry
    out: list[ViewResult] = []
    for start in range(0, len(views), BATCH):
        chunk = list(views[start:start + BATCH])
        batch = prepare_batch([v.pixels for v in chunk], entry.input, entry.preprocessing)
        out += measured_views(loaded, chunk, loaded.analyzer(batch), view_results)
    return out


def measured_views(loaded, views: Sequence[XRay], run, view_results: Callable) -> list[ViewResult]:
    """measure_views' work on one forward output (serving.segmentation.MeasurementOutput)
    whose rows are these views, in order (predict-batch runs several studies' views at once)."""
    measured, probabilities = measure_batch(loaded.entry, run.masks, [v.pixels.shape[1] for v in views])
    # the heart mask stands in for the heatmap: what the overlay's intensity blends
    maps = [(np.ascontiguousarray(m[..., 0], np.float32), None) for m in run.masks]
    results = view_results(loaded, views, _Pass(probabilities, run.pooled_features), maps)
    return [dataclasses.replace(r, measurement=m) for r, m in zip(results, measured)]


def not_measured_reasons(view: ViewResult) -> tuple[str, ...]:
    """The scope reason of a view the model could not measure (none when it measured it)."""
    return () if view.measurement is not None else (f"{view.image.name or 'image'}: {NOT_MEASURED}",)


def study_probability(entry: ModelEntry, counted: Sequence[ViewResult]) -> float | None:
    """The study's probability from its CTR (the mean of the counted views' CTRs), as the
    result's `measurements` states it; None when no counted view was measured."""
    ctrs = [v.measurement.ctr for v in counted if v.measurement is not None]
    return ctr_probability(float(np.mean(ctrs)), entry) if ctrs else None
