"""Metrics of a binary classifier on plain arrays: the decision's and the ranking's metrics,
percentile bootstrap intervals (clusters resampled together), per group and per study.

The conventions (``prob >= threshold`` is positive; an undefined metric is None, never NaN)
are those of xray_ai.training.evaluation, which assembles these into the registry's metrics.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

__all__ = ["SCALAR_METRICS", "as_arrays", "binary_metrics", "bootstrap_ci", "study_level", "per_group"]

#: Scalar metrics reported (and bootstrapped) for every evaluation, in display order.
SCALAR_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "kappa")

# Bootstrap weights are processed in blocks of at most this many cells (8 bytes each),
# so memory stays bounded (~16 MB) whatever n and n_boot are.
_BOOT_BLOCK_CELLS = 2_000_000


# --------------------------------------------------------------------------- helpers


def as_arrays(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return labels as int64 {0, 1} and probabilities as float64, both 1-D."""
    y = np.asarray(y_true).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} items but prob has {p.size}")
    if y.size == 0:
        raise ValueError("cannot evaluate on zero items")
    if not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5].tolist()
        raise ValueError(f"y_true must hold only 0 and 1; found {bad}")
    if not np.isfinite(p).all():
        raise ValueError("prob holds NaN or infinite values")
    return y.astype(np.int64), p


def _float_or_none(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _groups_array(groups: Any, n: int, name: str) -> np.ndarray:
    g = np.asarray(groups).ravel()
    if g.size != n:
        raise ValueError(f"{name} has {g.size} items but there are {n} predictions")
    return g


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1]; got {threshold}")
    return threshold



# --------------------------------------------------------------------------- metrics


def binary_metrics(y_true: Any, prob: Any, threshold: float) -> dict[str, Any]:
    """Metrics of the decision ``prob >= threshold`` and of the ranking ``prob``.

    Args:
        y_true: Labels, shape (n,), values 0 or 1.
        prob: Predicted probability of the positive class, shape (n,), float in [0, 1].
        threshold: Operating point in [0, 1]; positive when ``prob >= threshold``.

    Returns:
        Plain Python values: ``n``, ``n_positive``, ``threshold``, ``auc`` (None when only
        one class is present), ``accuracy``, ``precision``, ``recall`` and its synonym
        ``sensitivity``, ``specificity``, ``f1``, ``kappa`` (Cohen's, decision vs. truth)
        and ``confusion_matrix`` ({"tn", "fp", "fn", "tp"} ints). Undefined ratios are None.
    """
    y, p = as_arrays(y_true, prob)
    threshold = _check_threshold(threshold)
    pred = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, pred, labels=[0, 1]).ravel())
    two_classes = 0 < tp + fn < y.size
    nan = float("nan")
    with warnings.catch_warnings():
        # Undefined cases are reported as None below; sklearn's warnings about them add nothing.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        kappa = skm.cohen_kappa_score(y, pred, labels=[0, 1], replace_undefined_by=nan)
    sensitivity = skm.recall_score(y, pred, pos_label=1, zero_division=nan)
    return {
        "n": int(y.size),
        "n_positive": int(tp + fn),
        "threshold": threshold,
        "auc": float(skm.roc_auc_score(y, p)) if two_classes else None,
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": _float_or_none(skm.precision_score(y, pred, zero_division=nan)),
        "recall": _float_or_none(sensitivity),
        "sensitivity": _float_or_none(sensitivity),
        "specificity": _float_or_none(skm.recall_score(y, pred, pos_label=0, zero_division=nan)),
        "f1": _float_or_none(skm.f1_score(y, pred, zero_division=nan)),
        "kappa": _float_or_none(kappa),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def _bootstrap_weights(rng: np.random.Generator, cluster_of: np.ndarray, n_clusters: int,
                       n_boot: int) -> np.ndarray:
    """How often each item is drawn in each resample, shape (n_boot, n), float64.

    Clusters (single items when there are no groups) are drawn with replacement, as many
    as there are clusters; an item is drawn as often as its cluster.
    """
    draws = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    offsets = (np.arange(n_boot) * n_clusters)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_clusters)
    return counts.reshape(n_boot, n_clusters)[:, cluster_of].astype(np.float64)


def _weighted_metrics(w: np.ndarray, y: np.ndarray, pred: np.ndarray, rank: np.ndarray,
                      n_unique: int) -> dict[str, np.ndarray]:
    """Metrics of many weighted resamples at once; w has shape (B, n), results shape (B,).

    The same definitions as `binary_metrics` (checked against sklearn in the tests), written
    on resample counts so that 1000 resamples cost a few matrix products instead of 1000
    sklearn calls. NaN marks an undefined value.
    """
    pos, neg = y == 1, y == 0
    tp = w @ (pos & (pred == 1))
    fn = w @ (pos & (pred == 0))
    fp = w @ (neg & (pred == 1))
    tn = w @ (neg & (pred == 0))
    n = tp + fn + fp + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        po = (tp + tn) / n
        pe = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / n**2
        out = {
            "accuracy": po,
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "precision": tp / (tp + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "kappa": np.where(pe < 1, (po - pe) / (1 - pe), np.nan),
        }
        # Mann-Whitney AUC on tie groups of the scores: each positive counts the weight of
        # negatives ranked below it, plus half of those tied with it.
        b = w.shape[0]
        wp = np.zeros((b, n_unique))
        wn = np.zeros((b, n_unique))
        np.add.at(wp.T, rank[pos], w[:, pos].T)
        np.add.at(wn.T, rank[neg], w[:, neg].T)
        below = np.cumsum(wn, axis=1) - wn
        pairs = wp.sum(axis=1) * wn.sum(axis=1)
        out["auc"] = np.where(pairs > 0, (wp * (below + 0.5 * wn)).sum(axis=1) / pairs, np.nan)
    return out


def bootstrap_ci(y_true: Any, prob: Any, threshold: float, *, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, groups: Any = None) -> dict[str, list[float]]:
    """Percentile bootstrap confidence intervals of `SCALAR_METRICS`.

    Args:
        y_true: Labels, shape (n,), 0 or 1.
        prob: Probabilities, shape (n,), in [0, 1].
        threshold: Operating point; positive when ``prob >= threshold``.
        n_boot: Number of resamples.
        seed: Seed of the resampling; the same seed gives the same intervals.
        alpha: 1 - coverage; 0.05 gives 95 % intervals.
        groups: Optional cluster ids, shape (n,) (patient or study ids). When given, whole
            clusters are resampled, so correlated images of one patient stay together and
            the intervals are not too narrow.

    Returns:
        Metric -> [low, high] (plain floats). Resamples where a metric is undefined (e.g.
        AUC when a resample holds one class) are skipped for that metric; a metric
        undefined in every resample is left out.
    """
    y, p = as_arrays(y_true, prob)
    threshold = _check_threshold(threshold)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1; got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
    if groups is None:
        cluster_of, n_clusters = np.arange(y.size), y.size
    else:
        _, cluster_of = np.unique(_groups_array(groups, y.size, "groups"), return_inverse=True)
        n_clusters = int(cluster_of.max()) + 1
    pred = (p >= threshold).astype(np.int64)
    _, rank = np.unique(p, return_inverse=True)
    n_unique = int(rank.max()) + 1

    rng = np.random.default_rng(seed)
    block = max(1, _BOOT_BLOCK_CELLS // max(y.size, n_unique))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n_boot, block):
        w = _bootstrap_weights(rng, cluster_of, n_clusters, min(block, n_boot - start))
        parts.append(_weighted_metrics(w, y, pred, rank, n_unique))

    out: dict[str, list[float]] = {}
    for name in SCALAR_METRICS:
        values = np.concatenate([part[name] for part in parts])
        values = values[~np.isnan(values)]
        if values.size == 0:
            continue
        low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out[name] = [float(low), float(high)]
    return out


def study_level(y_true: Any, prob: Any, study_ids: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool view-level predictions into study-level ones (MURA: mean of the views).

    Args:
        y_true: View labels, shape (n,), 0 or 1.
        prob: View probabilities, shape (n,).
        study_ids: Study of each view, shape (n,), any sortable ids.

    Returns:
        ``(y_study, prob_study, ids)``: int64 labels, float64 mean probabilities and the
        study ids, each of shape (n_studies,), in sorted id order.

    Raises:
        ValueError: When the views of one study carry different labels (the id named).
    """
    y, p = as_arrays(y_true, prob)
    ids, inverse = np.unique(_groups_array(study_ids, y.size, "study_ids"), return_inverse=True)
    counts = np.bincount(inverse, minlength=ids.size)
    positives = np.bincount(inverse, weights=y, minlength=ids.size)
    mixed = (positives > 0) & (positives < counts)
    if mixed.any():
        first = ids[mixed][0]
        first = first.item() if isinstance(first, np.generic) else first
        raise ValueError(f"views of study {first!r} disagree on the label "
                         f"({int(mixed.sum())} such studies)")
    prob_study = np.bincount(inverse, weights=p, minlength=ids.size) / counts
    return (positives > 0).astype(np.int64), prob_study, ids


def per_group(y_true: Any, prob: Any, threshold: float, groups: Any) -> dict[str, dict[str, Any]]:
    """`binary_metrics` for each group (e.g. body part), keyed by ``str(group)``, sorted.

    A group with one class gets ``auc`` None (and None for the ratios it cannot define).
    """
    y, p = as_arrays(y_true, prob)
    g = _groups_array(groups, y.size, "groups")
    return {str(key): binary_metrics(y[g == key], p[g == key], threshold) for key in np.unique(g)}
