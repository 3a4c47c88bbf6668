"""The heatmap-trust report around the scores (xray_ai.explain.scores): which images it is
measured on, every method scored on them, how it is printed, and where it is kept.

`python -m xray_ai explain-eval --model ID --data DIR` prints the table and writes the JSON
beside the model file (`<model>.explain.json`, named by xray_ai.serving.artifacts), where
the performance page finds it.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from xray_ai.explain.scores import POINTING_TOLERANCE, STEPS, deletion_insertion, energy_inside, pointing_game
from xray_ai.images import load_image
from xray_ai.serving import artifacts
from xray_ai.serving.preprocessing import prepare_batch

__all__ = ["lesion_cases", "evaluate_explanations", "format_table", "explain_json_path", "save", "load_report"]


def explain_json_path(model_path: str | Path) -> Path:
    """Where the explanation scores of a model file are kept."""
    return artifacts.explain_path(model_path)


def lesion_cases(rows: Any, spec: Any, preprocessing: str = "unit",
                 limit: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Model-ready images and boolean lesion masks of the abnormal rows that have a non-empty mask.

    Args:
        rows: a dataset frame (xray_ai.training.datasets readers) with `path`, `label` and `mask_path`.
        spec: the model's InputSpec; preprocessing: its registry `preprocessing`.
        limit: stop after this many cases.

    Returns:
        (images, masks): float32 (H, W, C) arrays ready for the model, and bool masks at the
        mask file's own resolution.
    """
    images, masks = [], []
    for _, row in rows[(rows["label"] == 1) & rows["mask_path"].notna()].iterrows():
        mask = cv2.imread(str(row["mask_path"]), cv2.IMREAD_GRAYSCALE)
        if mask is None or not mask.any():
            continue
        images.append(prepare_batch([load_image(row["path"]).pixels], spec, preprocessing)[0])
        masks.append(mask > 0)
        if limit is not None and len(images) >= limit:
            break
    return images, masks


def format_table(report: dict[str, Any]) -> str:
    """The report of `scores.evaluate_explanations` as a fixed-width table, one method a row."""
    lines = [
        f"{report['model_id']}: {report['n_images']} abnormal images with lesion masks",
        f"{'method':12s} {'pointing':>9s} {'<=15px@224':>10s} {'energy in':>10s} {'deletion':>9s} {'insertion':>10s} {'s/image':>9s}",
    ]
    for method, r in report["methods"].items():
        lines.append(
            f"{method:12s} {r['pointing_game']:9.3f} {r['pointing_game_tolerant']:10.3f} {r['energy_inside']:10.3f} {r['deletion_auc']:9.3f} "
            f"{r['insertion_auc']:10.3f} {r['seconds_per_image']:9.3f}"
        )
    lines.append("pointing game / energy inside / insertion: higher is better; deletion: lower is better")
    return "\n".join(lines)


def save(report: dict[str, Any], path: Path) -> None:
    """Write the report as indented JSON (the file `explain_json_path` names)."""
    path.write_text(json.dumps(report, indent=2) + "\n")


def load_report(path: Path) -> dict[str, Any] | None:
    """A saved report, or None when there is none or it cannot be read (the page says nothing then)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("methods"), dict) else None


def evaluate_explanations(explainer: Any, predict: Callable[[np.ndarray], np.ndarray],
                          images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                          methods: Sequence[str], *, model_id: str = "",
                          progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Scores per method over abnormal images with lesion masks.

    Args:
        explainer: an xray_ai.explain.methods.Explainer for the model.
        predict: model-ready batch -> probabilities (N,).
        images: model-ready images (H, W, C), abnormal cases only.
        masks: boolean lesion masks (any size), one per image, non-empty.
        methods: ids from xray_ai.explain.base.METHODS.
    """
    if not images:
        raise ValueError("no abnormal images with a lesion mask to evaluate explanations on")
    results: dict[str, Any] = {}
    for method in methods:
        maps, seconds, deletion, insertion = [], [], [], []
        for i, x in enumerate(images):
            out = explainer.explain(x[None], method)
            maps.append(out.heatmap)
            seconds.append(out.seconds)
            d, ins = deletion_insertion(predict, x, out.heatmap)
            deletion.append(d)
            insertion.append(ins)
            if progress:
                progress(method, i + 1)
        results[method] = {
            "pointing_game": pointing_game(maps, masks),
            "pointing_game_tolerant": pointing_game(maps, masks, POINTING_TOLERANCE),  # 15 px at 224
            "energy_inside": energy_inside(maps, masks),
            "deletion_auc": float(np.mean(deletion)),
            "insertion_auc": float(np.mean(insertion)),
            "seconds_per_image": float(np.median(seconds)),
        }
    return {
        "model_id": model_id,
        "n_images": len(images),
        "steps": STEPS,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "methods": results,
    }
