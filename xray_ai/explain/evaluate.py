"""The heatmap-trust report around the scores (xray_ai.explain.scores): which images it is
measured on, how it is printed, and where it is kept.

`python -m xray_ai explain-eval --model ID --data DIR` prints the table and writes the JSON
beside the model file (`<model>.explain.json`, named by xray_ai.serving.artifacts), where
the performance page finds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from xray_ai.images.load import load_image
from xray_ai.serving import artifacts
from xray_ai.serving.preprocessing import prepare_batch

__all__ = ["lesion_cases", "format_table", "explain_json_path", "save", "load_report"]


def explain_json_path(model_path: str | Path) -> Path:
    """Where the explanation scores of a model file are kept."""
    return artifacts.explain_path(model_path)


def lesion_cases(rows: Any, spec: Any, preprocessing: str = "unit",
                 limit: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Model-ready images and boolean lesion masks of the abnormal rows that have a non-empty mask.

    Args:
        rows: a dataset frame (xray_ai.training.data readers) with `path`, `label` and `mask_path`.
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
