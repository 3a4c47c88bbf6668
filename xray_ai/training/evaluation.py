"""Evaluation of a binary classifier: metrics, bootstrap CIs, operating points, calibration.

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

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

__all__ = [
    "SCALAR_METRICS",
    "binary_metrics",
    "bootstrap_ci",
    "study_level",
    "choose_threshold",
    "reliability",
    "fit_temperature",
    "apply_temperature",
    "calibrate_if_helpful",
    "per_group",
    "evaluation_report",
    "pointing_game",
    "energy_inside",
]

#: Scalar metrics reported (and bootstrapped) for every evaluation, in display order.
SCALAR_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "kappa")

_EPS = 1e-7
_MAX_ROC_POINTS = 101
# Bootstrap weights are processed in blocks of at most this many cells (8 bytes each),
# so memory stays bounded (~16 MB) whatever n and n_boot are.
_BOOT_BLOCK_CELLS = 2_000_000


# --------------------------------------------------------------------------- helpers


def _as_arrays(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
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
    y, p = _as_arrays(y_true, prob)
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
    y, p = _as_arrays(y_true, prob)
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
    y, p = _as_arrays(y_true, prob)
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


# --------------------------------------------------------------------------- operating point


def choose_threshold(y_val: Any, prob_val: Any, method: str = "youden",
                     target: float = 0.9) -> tuple[float, str]:
    """Choose the operating point on the VALIDATION split.

    Never pass test data here: a threshold tuned on the test split makes the test metrics
    optimistic. The returned description records the method, the split and its size, and
    belongs in the registry entry's ``threshold_method``.

    Args:
        y_val: Validation labels, shape (n,), 0 or 1; both classes needed.
        prob_val: Validation probabilities, shape (n,).
        method: ``"youden"`` maximises Youden's J = sensitivity + specificity - 1 (ties go
            to the highest threshold); ``"sensitivity"`` takes the highest threshold whose
            validation sensitivity is at least ``target``.
        target: Sensitivity target in (0, 1], used by ``"sensitivity"`` only.

    Returns:
        ``(threshold, description)``; the threshold is one of the validation scores, for
        the decision ``prob >= threshold``.
    """
    y, p = _as_arrays(y_val, prob_val)
    if y.min() == y.max():
        raise ValueError("choose_threshold needs both classes in the validation labels")
    fpr, tpr, thresholds = skm.roc_curve(y, p, drop_intermediate=False)
    # roc_curve's first point has threshold +inf (nothing positive); it is never an operating point.
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if method == "youden":
        j = tpr - fpr
        i = int(np.argmax(j))  # thresholds decrease, so the first maximum is the highest threshold
        if j[i] <= 0:
            warnings.warn(f"Youden's J is at most {j[i]:.3f} on validation: the scores do not "
                          "separate the classes", stacklevel=2)
        how = "Youden's J"
    elif method == "sensitivity":
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target sensitivity must lie in (0, 1]; got {target}")
        i = int(np.argmax(tpr >= target - 1e-12))  # tpr reaches 1 at the lowest threshold
        how = f"highest threshold with sensitivity >= {target:g}"
    else:
        raise ValueError(f"unknown method {method!r}; use 'youden' or 'sensitivity'")
    threshold = float(thresholds[i])
    description = (f"{how} on the validation split (n={y.size}): "
                   f"sensitivity {tpr[i]:.3f}, specificity {1 - fpr[i]:.3f}")
    return threshold, description


# --------------------------------------------------------------------------- calibration


def reliability(y_true: Any, prob: Any, n_bins: int = 10) -> dict[str, Any]:
    """Reliability diagram and expected calibration error, equal-width bins on [0, 1].

    Bin k holds ``k/n_bins <= prob < (k+1)/n_bins``; prob 1.0 falls in the last bin.

    Args:
        y_true: Labels, shape (n,), 0 or 1.
        prob: Probabilities, shape (n,), in [0, 1].
        n_bins: Number of bins.

    Returns:
        ``mean_predicted``, ``fraction_positive`` and ``counts`` (lists over the non-empty
        bins, in order), ``n_bins`` and ``ece`` = sum over bins of
        count / n * |fraction_positive - mean_predicted|.
    """
    y, p = _as_arrays(y_true, prob)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1; got {n_bins}")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"prob must lie in [0, 1]; found [{p.min():.4g}, {p.max():.4g}]")
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    used = counts > 0
    mean_predicted = np.bincount(bins, weights=p, minlength=n_bins)[used] / counts[used]
    fraction_positive = np.bincount(bins, weights=y, minlength=n_bins)[used] / counts[used]
    ece = float(np.sum(counts[used] / y.size * np.abs(fraction_positive - mean_predicted)))
    return {
        "mean_predicted": [float(v) for v in mean_predicted],
        "fraction_positive": [float(v) for v in fraction_positive],
        "counts": [int(v) for v in counts[used]],
        "n_bins": int(n_bins),
        "ece": ece,
    }


def _to_logits(scores: Any, kind: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if kind == "auto":
        kind = "prob" if s.size and s.min() >= 0 and s.max() <= 1 else "logit"
    if kind == "prob":
        if s.size and (s.min() < 0 or s.max() > 1):
            raise ValueError(f"probabilities must lie in [0, 1]; found [{s.min():.4g}, {s.max():.4g}]")
        s = np.clip(s, _EPS, 1 - _EPS)
        return np.log(s) - np.log1p(-s)
    if kind == "logit":
        return s
    raise ValueError(f"unknown kind {kind!r}; use 'auto', 'prob' or 'logit'")


def _nll(y: np.ndarray, logits: np.ndarray) -> float:
    # Mean binary cross-entropy of sigmoid(logits), stable for large |logits|.
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))


def fit_temperature(y_val: Any, logits_or_prob_val: Any, *, kind: str = "auto") -> float:
    """Temperature scaling fitted on the VALIDATION split.

    Finds T > 0 minimising the mean negative log-likelihood of ``sigmoid(logit / T)``
    (bounded search on log T, T in [e^-5, e^5]). T > 1 softens an over-confident model.

    Args:
        y_val: Validation labels, shape (n,), 0 or 1.
        logits_or_prob_val: Validation scores, shape (n,): logits, or probabilities that
            are turned into logits (clipped to [1e-7, 1 - 1e-7]).
        kind: ``"logit"``, ``"prob"``, or ``"auto"`` (probabilities when every value lies
            in [0, 1]; pass the kind explicitly for logits that might).

    Returns:
        The temperature T as a float.
    """
    from scipy.optimize import minimize_scalar

    z = _to_logits(logits_or_prob_val, kind)
    y, z = _as_arrays(y_val, z)
    result = minimize_scalar(lambda log_t: _nll(y, z / math.exp(log_t)), bounds=(-5.0, 5.0),
                             method="bounded", options={"xatol": 1e-6})
    return float(math.exp(result.x))


def apply_temperature(prob: Any, temperature: float) -> np.ndarray:
    """Rescale probabilities: ``sigmoid(logit(prob) / temperature)``.

    Args:
        prob: Probabilities, any shape, in [0, 1].
        temperature: T > 0 from `fit_temperature`; 1.0 returns the input unchanged.

    Returns:
        float64 array of the input's shape, in (0, 1) (unchanged values when T == 1).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    p = np.asarray(prob, dtype=np.float64)
    if temperature == 1.0:
        return p.copy()
    z = _to_logits(p, "prob").reshape(p.shape) / temperature
    return 1.0 / (1.0 + np.exp(-z))


def calibrate_if_helpful(y_val: Any, p_val: Any, *, n_bins: int = 10) -> tuple[float, float, float]:
    """Fit a temperature on validation and keep it only if it helps there.

    The temperature is kept when it lowers both the validation NLL and the validation
    ECE; otherwise T = 1.0 (no scaling) and ``ece_after == ece_before``.

    Args:
        y_val: Validation labels, shape (n,), 0 or 1.
        p_val: Validation probabilities, shape (n,), in [0, 1].
        n_bins: Bins of the ECE.

    Returns:
        ``(T, ece_before, ece_after)`` on the validation split.
    """
    y, p = _as_arrays(y_val, p_val)
    t = fit_temperature(y, p, kind="prob")
    p_after = apply_temperature(p, t)
    ece_before = reliability(y, p, n_bins)["ece"]
    ece_after = reliability(y, p_after, n_bins)["ece"]
    nll_before, nll_after = _nll(y, _to_logits(p, "prob")), _nll(y, _to_logits(p_after, "prob"))
    if nll_after < nll_before and ece_after < ece_before:
        return t, ece_before, ece_after
    return 1.0, ece_before, ece_before


# --------------------------------------------------------------------------- report


def per_group(y_true: Any, prob: Any, threshold: float, groups: Any) -> dict[str, dict[str, Any]]:
    """`binary_metrics` for each group (e.g. body part), keyed by ``str(group)``, sorted.

    A group with one class gets ``auc`` None (and None for the ratios it cannot define).
    """
    y, p = _as_arrays(y_true, prob)
    g = _groups_array(groups, y.size, "groups")
    return {str(key): binary_metrics(y[g == key], p[g == key], threshold) for key in np.unique(g)}


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
    y, p = _as_arrays(y_true, prob)
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


# --------------------------------------------------------------------------- localisation


def _localisation_pairs(heatmaps: Sequence[Any], masks: Sequence[Any]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    # Yields (heatmap resized to the mask, mask) for each abnormal image.
    import cv2

    if len(heatmaps) != len(masks):
        raise ValueError(f"{len(heatmaps)} heatmaps but {len(masks)} masks")
    found = False
    for i, (heatmap, mask) in enumerate(zip(heatmaps, masks)):
        m = np.asarray(mask).astype(bool)
        h = np.asarray(heatmap, dtype=np.float32)
        if m.ndim != 2 or h.ndim != 2:
            raise ValueError(f"item {i}: heatmap and mask must be 2-D; got {h.shape} and {m.shape}")
        if not m.any():
            continue  # a normal image: nothing to point at
        found = True
        if h.shape != m.shape:
            h = cv2.resize(h, (m.shape[1], m.shape[0]), interpolation=cv2.INTER_LINEAR)
        yield h, m
    if not found:
        raise ValueError("no abnormal image: every mask is empty")


# Zhang et al. (2016), "Top-down neural attention by excitation backprop": a hit when the
# maximum lies within 15 pixels of the object, on inputs of about 224 pixels.
POINTING_TOLERANCE = 15 / 224


def pointing_game(heatmaps: Sequence[Any], masks: Sequence[Any], tolerance: float = 0.0) -> float:
    """Share of abnormal images whose heatmap maximum falls inside the lesion mask (or
    within `tolerance` of it).

    Each heatmap (2-D, any size) is resized to its mask's size with bilinear interpolation
    before the argmax. Images with an empty mask (normal) are skipped. A constant heatmap
    (e.g. the all-zero map of a failed Grad-CAM) points nowhere and counts as a miss.

    Args:
        heatmaps: Sequence (or N x h x w array) of 2-D float heatmaps.
        masks: Sequence (or N x H x W array) of 2-D boolean lesion masks.
        tolerance: 0 (strict), or the allowed distance from the mask as a fraction of the
            mask's larger side (POINTING_TOLERANCE is the original game's 15 px at 224). A
            thin lesion (a fracture line) is missed by a 7 x 7 map's maximum even when it
            sits in the right cell; the tolerant game tells those apart from misses.

    Returns:
        Hit rate in [0, 1].

    Raises:
        ValueError: When the lengths differ, an item is not 2-D, or no mask is non-empty.
    """
    import cv2

    hits = []
    for h, m in _localisation_pairs(heatmaps, masks):
        radius = int(round(tolerance * max(m.shape)))
        if radius > 0:  # the mask grown by a disk of that radius
            disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            m = cv2.dilate(m.astype(np.uint8), disk).astype(bool)
        hits.append(bool(h.max() > h.min() and m.flat[int(np.argmax(h))]))
    return float(np.mean(hits))


def energy_inside(heatmaps: Sequence[Any], masks: Sequence[Any]) -> float:
    """Mean share of heatmap energy inside the lesion mask, over abnormal images.

    Per image: sum(heatmap inside mask) / sum(heatmap), after bilinear resizing to the
    mask's size and clipping negative values to 0; a map with no energy scores 0.

    Args:
        heatmaps: Sequence (or N x h x w array) of 2-D float heatmaps.
        masks: Sequence (or N x H x W array) of 2-D boolean lesion masks.

    Returns:
        Mean fraction in [0, 1].
    """
    shares = []
    for h, m in _localisation_pairs(heatmaps, masks):
        h = h.astype(np.float64).clip(0.0, None)
        total = h.sum()
        shares.append(float(h[m].sum() / total) if total > 0 else 0.0)
    return float(np.mean(shares))
