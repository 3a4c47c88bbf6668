"""Evaluation of a binary classifier: the registry's `metrics` object, from metrics, bootstrap
CIs and calibration (xray_ai.training.metrics, xray_ai.training.calibration).

Everything here works on plain arrays (labels in {0, 1}, probabilities in [0, 1]) and
returns plain Python numbers, so results go straight into the registry's `metrics` object
(`evaluation_report`) and through `json.dumps`. No tensorflow: the model-side code scores
the images, this module only judges the scores.

Conventions, shared with the app:

- The decision is positive when ``prob >= threshold``.
- A metric that is undefined on the data (AUC with one class, sensitivity without
  positives, precision without positive decisions, kappa when chance agreement is 1) is
  ``None``, never NaN, and is left out of the bootstrap intervals.
- Operating points and temperatures are chosen on the VALIDATION split
  (`choose_threshold(y_val, prob_val)`, `fit_temperature(y_val, ...)`) and then applied,
  unchanged, to the test split that `evaluation_report(..., split="test")` describes.
  Nothing here can tell which split an array came from; the argument names say which one
  is expected, and the threshold description records the split and its size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from xray_ai.training.calibration import reliability
from xray_ai.training.metrics import SCALAR_METRICS, as_arrays, binary_metrics, bootstrap_ci, per_group, study_level

__all__ = ["evaluation_report"]

_MAX_ROC_POINTS = 101  # the stored ROC curve is thinned to this many points


def _scalars(m: dict[str, Any]) -> dict[str, Any]:
    # Flat form for tables: the scalar metrics plus tn/fp/fn/tp.
    out = {"n": m["n"], "n_positive": m["n_positive"]}
    out.update({k: m[k] for k in SCALAR_METRICS})
    out.update(m["confusion_matrix"])
    return out


def _roc_points(y: np.ndarray, p: np.ndarray) -> dict[str, list[float]]:
    fpr, tpr, _ = skm.roc_curve(y, p)
    if fpr.size > _MAX_ROC_POINTS:
        keep = np.unique(np.round(np.linspace(0, fpr.size - 1, _MAX_ROC_POINTS)).astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 6) for v in fpr], "tpr": [round(float(v), 6) for v in tpr]}


def evaluation_report(y_true: Any, prob: Any, threshold: float, *, split: str, study_ids: Any = None,
                      groups: Any = None, body_parts: Any = None, n_boot: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """The registry entry's ``metrics`` object (README, "Registry"), JSON-serialisable.

    Args:
        y_true: View labels, shape (n,), 0 or 1.
        prob: View probabilities, shape (n,), in [0, 1].
        threshold: The operating point, chosen beforehand on validation data.
        split: The split these arrays come from, e.g. ``"test"``; stored as ``split``.
        study_ids: Optional study of each view, shape (n,): adds ``study_level`` (views
            pooled by their mean) and, when ``groups`` is None, makes the bootstrap
            resample studies.
        groups: Optional cluster ids (e.g. patient ids), shape (n,), for the bootstrap.
        body_parts: Optional body part of each view, shape (n,): adds ``per_body_part``.
        n_boot: Bootstrap resamples for ``ci95``; 0 leaves ``ci95`` out.
        seed: Bootstrap seed.

    Returns:
        ``split``, ``n``, ``n_positive``, ``threshold``, the `SCALAR_METRICS`, ``ece``,
        ``ci95`` (metric -> [low, high]), ``ci_method``, ``roc`` ({fpr, tpr}, at most 101
        points), ``confusion_matrix``, ``calibration`` (reliability lists), and where asked
        ``per_body_part`` (part -> flat metrics) and ``study_level`` (flat metrics + ece).
    """
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must name the split the metrics are measured on; got {split!r}")
    y, p = as_arrays(y_true, prob)
    base = binary_metrics(y, p, threshold)
    calibration = reliability(y, p)
    report: dict[str, Any] = {"split": split, "n": base["n"], "n_positive": base["n_positive"],
                              "threshold": base["threshold"]}
    report.update({k: base[k] for k in SCALAR_METRICS})
    report["ece"] = calibration["ece"]
    if n_boot > 0:
        clusters, unit = (groups, "groups") if groups is not None else (study_ids, "studies")
        report["ci95"] = bootstrap_ci(y, p, threshold, n_boot=n_boot, seed=seed, groups=clusters)
        report["ci_method"] = (f"percentile bootstrap, {n_boot} resamples of "
                               f"{unit if clusters is not None else 'images'}, seed {seed}")
    if base["auc"] is not None:
        report["roc"] = _roc_points(y, p)
    report["confusion_matrix"] = base["confusion_matrix"]
    report["calibration"] = calibration
    if body_parts is not None:
        report["per_body_part"] = {k: _scalars(v) for k, v in per_group(y, p, threshold, body_parts).items()}
    if study_ids is not None:
        y_s, p_s, _ = study_level(y, p, study_ids)
        study = _scalars(binary_metrics(y_s, p_s, threshold))
        study["ece"] = reliability(y_s, p_s)["ece"]
        report["study_level"] = study
    return report
