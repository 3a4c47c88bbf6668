"""Operating points and calibration: the threshold chosen on validation, the reliability
diagram and its ECE, and temperature scaling kept only where it helps.

Everything is fitted on the VALIDATION split and applied unchanged to the test split (the
conventions of xray_ai.training.evaluation); the argument names say which split is expected.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm

from xray_ai.training.metrics import as_arrays

__all__ = ["choose_threshold", "reliability", "fit_temperature", "apply_temperature", "calibrate_if_helpful"]

_EPS = 1e-7  # probabilities are clipped to [_EPS, 1 - _EPS] before the logit


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
    y, p = as_arrays(y_val, prob_val)
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
    y, p = as_arrays(y_true, prob)
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
    y, z = as_arrays(y_val, z)
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
    y, p = as_arrays(y_val, p_val)
    t = fit_temperature(y, p, kind="prob")
    p_after = apply_temperature(p, t)
    ece_before = reliability(y, p, n_bins)["ece"]
    ece_after = reliability(y, p_after, n_bins)["ece"]
    nll_before, nll_after = _nll(y, _to_logits(p, "prob")), _nll(y, _to_logits(p_after, "prob"))
    if nll_after < nll_before and ece_after < ece_before:
        return t, ece_before, ece_after
    return 1.0, ece_before, ece_before
