"""After the fit and calibration: the operating point, chosen on the validation split only,
and the figures measured on the held-out test split (the registry entry's `metrics`).

Without a test split the figures come from the validation split, which also chose the
threshold; the metrics then say so (`note`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xray_ai.explain import scores
from xray_ai.explain.evaluate import lesion_cases
from xray_ai.registry import InputSpec
from xray_ai.training import evaluation
from xray_ai.training.calibration import choose_threshold, reliability
from xray_ai.training.features import pooled_features
from xray_ai.training.temperature import Calibration, predict

__all__ = ["OperatingPoint", "choose_operating_point", "evaluate_held_out", "localisation", "choose_default_heatmap",
           "body_part_accuracy"]


@dataclass(frozen=True)
class OperatingPoint:
    """The decision threshold and how it was chosen (Youden's J on validation), and the
    high-sensitivity point (0.9 validation sensitivity) stored beside it."""

    threshold: float
    method: str
    high_sensitivity: tuple[float, str]


def choose_operating_point(y_valid, p_valid) -> OperatingPoint:
    """The operating points from the validation split's labels and (calibrated) probabilities."""
    threshold, method = choose_threshold(y_valid, p_valid, "youden")
    high_sensitivity = choose_threshold(y_valid, p_valid, "sensitivity", target=0.9)
    return OperatingPoint(threshold, method, high_sensitivity)


def evaluate_held_out(model, parts: dict, spec: InputSpec, batch_size: int, calibration: Calibration,
                      point: OperatingPoint, *, seed: int, part_head=None) -> dict[str, Any]:
    """The metrics of `model` on `parts["test"]` (else `parts["valid"]`) at `point`: the
    evaluation report, both operating points, the temperature scaling, the body-part head's
    accuracy (with `part_head`) and the Grad-CAM localisation where images have lesion masks."""
    eval_name = "test" if not parts["test"].empty else "valid"
    eval_df = parts[eval_name]
    y_eval = eval_df["label"].to_numpy()
    p_eval = calibration.p_valid if eval_name == "valid" else predict(model, eval_df, spec, batch_size)
    metrics = evaluation.evaluation_report(
        y_eval, p_eval, point.threshold, split=eval_name,
        study_ids=eval_df["study_id"].to_numpy(),
        body_parts=eval_df["body_part"].to_numpy() if eval_df["body_part"].notna().any() else None,
        seed=seed,
    )
    if eval_name == "valid":
        metrics["note"] = "no test split: measured on the validation split that also chose the threshold (optimistic)"
    metrics["high_sensitivity_operating_point"] = {"threshold": point.high_sensitivity[0],
                                                   "method": point.high_sensitivity[1]}
    metrics["temperature_scaling"] = {
        "temperature": calibration.temperature, "fitted_on": "valid",
        "valid_ece_before": calibration.valid_ece_before, "valid_ece_after": calibration.valid_ece_after,
        f"{eval_name}_ece_after": reliability(y_eval, p_eval)["ece"],
        # folded into the saved logit layer: the served probability is the calibrated one
        "applied_at_inference": calibration.temperature != 1.0,
    }
    if part_head is not None:
        metrics["body_part"] = {"split": eval_name, **body_part_accuracy(model, part_head, eval_df, spec),
                                "classes": list(part_head.classes)}
    found = localisation(model, eval_df, spec)
    if found:
        metrics["localisation"] = found
    return metrics


def localisation(model, df, spec: InputSpec) -> dict[str, Any] | None:
    """Grad-CAM pointing game and energy inside the lesion mask on abnormal images with masks
    (None when `df` has none)."""
    from xray_ai.explain.gradcam import GradCam  # imports keras

    images, masks = lesion_cases(df, spec)
    if not images:
        return None
    cam = GradCam(model)
    heatmaps = [cam(x[None]).heatmaps[0] for x in images]
    return {
        "n": len(masks),
        "pointing_game": scores.pointing_game(heatmaps, masks),
        # within 15 px at 224 (the original game's tolerance), scaled to the input size
        "pointing_game_tolerant": scores.pointing_game(heatmaps, masks, scores.POINTING_TOLERANCE),
        "pointing_tolerance": scores.POINTING_TOLERANCE,
        "energy_inside": scores.energy_inside(heatmaps, masks),
        "target_layer": cam.target_layer,
    }


def choose_default_heatmap(model, parts: dict, spec: InputSpec, data: str = "") -> Any:
    """The model's default heatmap setting (xray_ai.explain.choose), chosen on the abnormal
    validation images with lesion masks, with the test split's figures for it added after the
    choice; None when the validation split has no lesion masks (the entry keeps Grad-CAM)."""
    from xray_ai.explain.choose import choose_heatmap, compute_maps, localisation_scores, with_test_figures
    images, masks = lesion_cases(parts["valid"], spec)
    if not images:
        return None
    chosen, _ = choose_heatmap(model, images, masks, data=f"{data}; valid split, {len(images)} abnormal images")
    del images, masks
    test_images, test_masks = lesion_cases(parts["test"], spec) if not parts["test"].empty else ([], [])
    if test_images:
        maps = compute_maps(model, {"chosen": chosen}, test_images)["chosen"]
        chosen = with_test_figures(chosen, localisation_scores(maps, test_masks), len(test_images))
    return chosen


def body_part_accuracy(model, head, df, spec: InputSpec) -> dict[str, Any]:
    """The body-part head's accuracy on the images of `df` with a known body part."""
    df = df[df["body_part"].isin(head.classes)]
    if df.empty:
        return {"n": 0, "accuracy": None}
    predicted = [part for part, _ in head.predict(pooled_features(model, df, spec))]
    return {"n": len(df), "accuracy": float(np.mean(np.array(predicted) == df["body_part"].to_numpy()))}
