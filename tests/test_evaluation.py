"""Tests of xray_ai.training.evaluation (and its metrics and calibration modules) and of the
localisation scores (xray_ai.explain.scores): metrics against hand-computed values on tiny arrays."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from xray_ai.explain import scores as heatmap_scores
from xray_ai.training import calibration, metrics
from xray_ai.training import evaluation as ev

REPO = Path(__file__).resolve().parents[1]

# Ten items; decision at 0.5 with ">=" (0.5 itself is positive):
#   y    1    1    1    1    0    0    0    0    0    0
#   p   .9   .8   .6   .3   .7   .4   .2   .1   .5  .05
#   d    1    1    1    0    1    0    0    0    1    0
#   ->  tp 3, fn 1, fp 2 (0.7, 0.5), tn 4
Y10 = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P10 = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.5, 0.05])


def _synthetic(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)


# ------------------------------------------------------------------ binary_metrics


def test_binary_metrics_match_hand_computed_values():
    m = metrics.binary_metrics(Y10, P10, 0.5)
    assert m["confusion_matrix"] == {"tn": 4, "fp": 2, "fn": 1, "tp": 3}
    assert (m["n"], m["n_positive"], m["threshold"]) == (10, 4, 0.5)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # po = 7/10; pe = P(d=1)P(y=1) + P(d=0)P(y=0) = .5*.4 + .5*.6 = .5; kappa = (.7-.5)/(1-.5)
    assert m["kappa"] == pytest.approx(0.4)
    # Pairs (pos, neg) ordered correctly: 0.9 -> 6, 0.8 -> 6, 0.6 -> 5, 0.3 -> 3; 20 of 24.
    assert m["auc"] == pytest.approx(20 / 24)
    for key in ("accuracy", "precision", "sensitivity", "specificity", "f1", "kappa", "auc"):
        assert type(m[key]) is float
    assert all(type(v) is int for v in m["confusion_matrix"].values())


def test_threshold_is_inclusive():
    assert metrics.binary_metrics([0, 1], [0.5, 0.5], 0.5)["confusion_matrix"] == {"tn": 0, "fp": 1, "fn": 0, "tp": 1}


def test_one_class_gives_none_not_nan():
    m = metrics.binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert m["auc"] is None
    assert m["sensitivity"] is None and m["recall"] is None  # no positives
    assert m["precision"] is None  # no positive decisions
    assert m["kappa"] is None  # chance agreement is 1
    assert m["specificity"] == 1.0 and m["accuracy"] == 1.0
    json.dumps(m, allow_nan=False)


@pytest.mark.parametrize("y, p, message", [
    ([0, 2], [0.1, 0.2], "only 0 and 1"),
    ([0, 1], [0.1], "2 items"),
    ([0, 1], [0.1, float("nan")], "NaN"),
])
def test_bad_input_is_refused(y, p, message):
    with pytest.raises(ValueError, match=message):
        metrics.binary_metrics(y, p, 0.5)


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_formulas_agree_with_sklearn_on_weighted_resamples():
    # The vectorised bootstrap computes metrics from resample counts; they must equal
    # sklearn's with those counts as sample weights (ties in the scores included).
    y, p = _synthetic(60)
    p = np.round(p, 1)
    pred = (p >= 0.5).astype(int)
    _, rank = np.unique(p, return_inverse=True)
    w = metrics._bootstrap_weights(np.random.default_rng(3), np.arange(60), 60, 5)
    got = metrics._weighted_metrics(w, y, pred, rank, int(rank.max()) + 1)
    for b in range(5):
        sw = w[b]
        assert got["auc"][b] == pytest.approx(skm.roc_auc_score(y, p, sample_weight=sw))
        assert got["kappa"][b] == pytest.approx(skm.cohen_kappa_score(y, pred, sample_weight=sw))
        assert got["f1"][b] == pytest.approx(skm.f1_score(y, pred, sample_weight=sw))
        assert got["precision"][b] == pytest.approx(skm.precision_score(y, pred, sample_weight=sw))
        assert got["sensitivity"][b] == pytest.approx(skm.recall_score(y, pred, sample_weight=sw))
        assert got["specificity"][b] == pytest.approx(skm.recall_score(y, pred, pos_label=0, sample_weight=sw))
        assert got["accuracy"][b] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=sw))


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data():
    y, p = _synthetic(2000)
    small = metrics.bootstrap_ci(y[:100], p[:100], 0.5, n_boot=300)
    large = metrics.bootstrap_ci(y, p, 0.5, n_boot=300)
    point = metrics.binary_metrics(y, p, 0.5)
    assert set(large) == set(metrics.SCALAR_METRICS)
    for name, (low, high) in large.items():
        assert low <= point[name] <= high, name
        assert high - low < small[name][1] - small[name][0], name


def test_bootstrap_is_deterministic_with_seed():
    y, p = _synthetic(200)
    a = metrics.bootstrap_ci(y, p, 0.5, n_boot=200, seed=7)
    assert a == metrics.bootstrap_ci(y, p, 0.5, n_boot=200, seed=7)
    assert a != metrics.bootstrap_ci(y, p, 0.5, n_boot=200, seed=8)


def test_group_bootstrap_resamples_whole_groups():
    # 20 patients, 50 identical images each: the information is that of 20 images.
    y, p = _synthetic(20, seed=4)
    patients = np.repeat(np.arange(20), 50)
    y_rep, p_rep = y[patients], p[patients]
    grouped = metrics.bootstrap_ci(y_rep, p_rep, 0.5, n_boot=300, seed=2, groups=patients)
    per_patient = metrics.bootstrap_ci(y, p, 0.5, n_boot=300, seed=2)
    naive = metrics.bootstrap_ci(y_rep, p_rep, 0.5, n_boot=300, seed=2)
    # Whole groups are drawn, and metrics are ratios of counts, so resampling the 1000
    # images by patient is exactly resampling the 20 patients.
    for name in per_patient:
        assert grouped[name] == pytest.approx(per_patient[name]), name
    assert grouped["auc"][1] - grouped["auc"][0] > 2 * (naive["auc"][1] - naive["auc"][0])


def test_bootstrap_skips_single_class_resamples_for_auc():
    y, p = [0, 0, 0, 1], [0.1, 0.4, 0.3, 0.8]
    ci = metrics.bootstrap_ci(y, p, 0.5, n_boot=200)
    assert ci["auc"] == [1.0, 1.0]  # every two-class resample ranks the positive first
    assert "auc" not in metrics.bootstrap_ci([0, 0, 0], [0.1, 0.2, 0.3], 0.5, n_boot=50)


def test_bootstrap_is_fast_enough():
    y, p = _synthetic(2000)
    start = time.perf_counter()
    metrics.bootstrap_ci(y, p, 0.5, n_boot=1000, groups=np.arange(2000) // 2)
    assert time.perf_counter() - start < 5.0  # ~0.2 s here; loose for a shared machine


# ------------------------------------------------------------------ study level


def test_study_level_takes_the_mean_of_views():
    y_s, p_s, ids = metrics.study_level([0, 1, 0, 1], [0.2, 0.6, 0.4, 0.9], ["b", "a", "b", "c"])
    assert ids.tolist() == ["a", "b", "c"]
    assert y_s.tolist() == [1, 0, 1]
    assert p_s.tolist() == pytest.approx([0.6, 0.3, 0.9])


def test_study_level_refuses_views_that_disagree_on_the_label():
    with pytest.raises(ValueError, match="study 'b'"):
        metrics.study_level([0, 1, 1, 1], [0.2, 0.6, 0.4, 0.9], ["b", "a", "b", "c"])


# ------------------------------------------------------------------ operating point


def test_youden_finds_the_known_best_threshold():
    # neg .1 .2 .3 .55 .6 | pos .5 .7 .8 .9: at 0.7 sens 3/4, spec 1 -> J .75 (at 0.5: 1 - 2/5 = .6)
    y = [0, 0, 0, 0, 0, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.55, 0.6, 0.5, 0.7, 0.8, 0.9]
    threshold, description = calibration.choose_threshold(y, p)
    assert threshold == 0.7
    assert description.startswith("Youden's J on the validation split (n=9)")


def test_youden_ties_go_to_the_highest_threshold_and_never_infinity():
    # J = .75 at 0.7 (sens 3/4, spec 1) and at 0.4 (sens 1, spec 3/4)
    threshold, _ = calibration.choose_threshold([0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert threshold == 0.7
    with pytest.warns(UserWarning, match="do not separate"):
        threshold, _ = calibration.choose_threshold([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9])
    assert np.isfinite(threshold)


def test_sensitivity_target_is_met_on_validation_with_the_highest_threshold():
    y, p = _synthetic(300, seed=5)
    threshold, description = calibration.choose_threshold(y, p, method="sensitivity", target=0.9)
    assert metrics.binary_metrics(y, p, threshold)["sensitivity"] >= 0.9
    higher = np.unique(p[p > threshold])[0]
    assert metrics.binary_metrics(y, p, higher)["sensitivity"] < 0.9
    assert "sensitivity >= 0.9 on the validation split (n=300)" in description


def test_choose_threshold_rejects_unknown_method_and_one_class():
    with pytest.raises(ValueError, match="unknown method 'f1'"):
        calibration.choose_threshold([0, 1], [0.2, 0.8], method="f1")
    with pytest.raises(ValueError, match="both classes"):
        calibration.choose_threshold([1, 1], [0.2, 0.8])


# ------------------------------------------------------------------ calibration


def test_reliability_and_ece_by_hand():
    # bins of width .1: {.05}, {.15, .18}, {.95, 1.0}
    r = calibration.reliability([0, 0, 1, 1, 1], [0.05, 0.15, 0.18, 0.95, 1.0], n_bins=10)
    assert r["counts"] == [1, 2, 2]
    assert r["mean_predicted"] == pytest.approx([0.05, 0.165, 0.975])
    assert r["fraction_positive"] == pytest.approx([0.0, 0.5, 1.0])
    # 1/5 * .05 + 2/5 * .335 + 2/5 * .025
    assert r["ece"] == pytest.approx(0.154)


@pytest.mark.parametrize("kind", ["logit", "prob"])
def test_temperature_scaling_recovers_a_known_temperature(kind):
    rng = np.random.default_rng(0)
    t_true = 2.5
    logits = rng.normal(0.0, 3.0, 20000)
    y = (rng.random(logits.size) < 1 / (1 + np.exp(-logits / t_true))).astype(int)
    scores = logits if kind == "logit" else 1 / (1 + np.exp(-logits))
    assert calibration.fit_temperature(y, scores, kind=kind) == pytest.approx(t_true, rel=0.06)


def test_apply_temperature_by_hand():
    # logit(0.8) = ln 4; halved, ln 2; sigmoid(ln 2) = 2/3
    assert calibration.apply_temperature([0.8], 2.0)[0] == pytest.approx(2 / 3)
    p = np.array([0.0, 0.3, 1.0])
    assert np.array_equal(calibration.apply_temperature(p, 1.0), p)
    with pytest.raises(ValueError, match="positive"):
        calibration.apply_temperature(p, 0.0)


def test_calibrate_if_helpful_keeps_temperature_only_when_it_helps():
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 3.0, 5000)
    y = (rng.random(logits.size) < 1 / (1 + np.exp(-logits / 3.0))).astype(int)
    t, before, after = calibration.calibrate_if_helpful(y, 1 / (1 + np.exp(-logits)))
    assert t > 2 and after < before
    # Every probability 0.5: no temperature changes anything.
    assert calibration.calibrate_if_helpful([0, 1, 1, 0], [0.5] * 4) == (1.0, 0.0, 0.0)


# ------------------------------------------------------------------ groups and report


def test_per_group_uses_binary_metrics_on_each_group():
    parts = np.array(["wrist"] * 6 + ["hand"] * 4)
    got = metrics.per_group(Y10, P10, 0.5, parts)
    assert list(got) == ["hand", "wrist"]
    assert got["wrist"] == metrics.binary_metrics(Y10[:6], P10[:6], 0.5)
    assert got["hand"]["auc"] is None and got["hand"]["n"] == 4  # the hand images are all negative


def test_evaluation_report_is_the_registry_metrics_object():
    studies = np.repeat(np.arange(1000), 2)  # two views per study, sharing its label
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 1000)[studies]
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)
    parts = np.where(np.arange(2000) % 4 < 2, "wrist", "elbow")
    report = ev.evaluation_report(y, p, 0.5, split="test", study_ids=studies, body_parts=parts, n_boot=200)
    json.loads(json.dumps(report, allow_nan=False))

    point = metrics.binary_metrics(y, p, 0.5)
    assert report["split"] == "test" and report["n"] == 2000
    for name in metrics.SCALAR_METRICS:
        assert report[name] == point[name]
        low, high = report["ci95"][name]
        assert low <= report[name] <= high
    assert "200 resamples of studies" in report["ci_method"]
    assert report["confusion_matrix"] == point["confusion_matrix"]
    assert report["ece"] == report["calibration"]["ece"]
    assert 2 < len(report["roc"]["fpr"]) == len(report["roc"]["tpr"]) <= 101
    assert report["roc"]["fpr"][0] == 0.0 and report["roc"]["tpr"][-1] == 1.0
    assert set(report["per_body_part"]) == {"wrist", "elbow"}
    assert report["per_body_part"]["wrist"]["n"] == 1000 and "tp" in report["per_body_part"]["wrist"]
    assert report["study_level"]["n"] == 1000
    assert "ece" in report["study_level"]


def test_evaluation_report_requires_a_split():
    with pytest.raises(ValueError, match="split"):
        ev.evaluation_report(Y10, P10, 0.5, split="", n_boot=0)


# ------------------------------------------------------------------ localisation


def _mask(size: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[rows, cols] = True
    return m


def test_pointing_game_on_hand_made_maps():
    peak_top_left = np.zeros((4, 4), np.float32)
    peak_top_left[0, 0] = 1.0
    peak_bottom_right = peak_top_left[::-1, ::-1].copy()
    lesion = _mask(8, slice(0, 3), slice(0, 3))
    heatmaps = [peak_top_left, peak_bottom_right, peak_bottom_right, np.zeros((4, 4))]
    masks = [lesion, lesion, np.zeros((8, 8), bool), lesion]
    # hit, miss, skipped (normal image), miss (a flat map points nowhere)
    assert heatmap_scores.pointing_game(heatmaps, masks) == pytest.approx(1 / 3)


def test_tolerant_pointing_game_counts_a_peak_near_a_thin_lesion():
    thin = _mask(100, slice(50, 51), slice(10, 90))  # a one-pixel line, like a fracture
    near, far = np.zeros((100, 100), np.float32), np.zeros((100, 100), np.float32)
    near[55, 50] = 1.0  # 5 px from the line
    far[80, 50] = 1.0  # 29 px from it
    assert heatmap_scores.pointing_game([near, far], [thin, thin]) == 0.0
    assert heatmap_scores.pointing_game([near, far], [thin, thin], tolerance=0.06) == 0.5  # radius 6 px
    assert heatmap_scores.pointing_game([near, far], [thin, thin], tolerance=0.3) == 1.0


def test_energy_inside_on_hand_made_maps():
    h = np.zeros((4, 4))
    h[0, 0], h[3, 3] = 3.0, 1.0
    lesion = _mask(4, slice(0, 2), slice(0, 2))
    # 3/4 inside; a uniform map (upsampled 2x2 -> 4x4) has 4/16 inside; no energy -> 0
    got = heatmap_scores.energy_inside([h, np.ones((2, 2)), np.zeros((4, 4))], [lesion] * 3)
    assert got == pytest.approx((0.75 + 0.25 + 0) / 3)


def test_localisation_needs_an_abnormal_image():
    with pytest.raises(ValueError, match="every mask is empty"):
        heatmap_scores.pointing_game([np.ones((4, 4))], [np.zeros((4, 4), bool)])


def test_evaluation_module_does_not_import_tensorflow():
    code = ("import sys, xray_ai.training.evaluation, xray_ai.training.metrics, xray_ai.training.calibration, "
            "xray_ai.explain.scores; "
            "print([m for m in ('tensorflow', 'keras', 'streamlit') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
