"""How far to trust a heatmap: localisation and faithfulness scores for every explanation method.

On abnormal images that carry a lesion mask (the phantoms do), for each method:

- pointing game: share of images whose map peaks inside the lesion mask;
- energy inside: mean share of the map's mass inside the mask;
- deletion / insertion (Petsiuk et al. 2018): the model's probability as the most salient
  pixels are progressively replaced by a blurred copy of the image (deletion; a faithful
  map makes it fall fast, so lower area is better), or restored into the blurred copy
  (insertion; higher is better). Blurring rather than blacking out keeps the perturbed
  images closer to radiographs (the concern ROAD raises about out-of-distribution masks);
- seconds per image.

`python -m xray_ai explain-eval --model ID --data DIR` prints the table and writes the JSON
beside the model file (`<model>.explain.json`), where the performance page finds it.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from xray_ai.training.evaluation import POINTING_TOLERANCE, energy_inside, pointing_game

__all__ = ["lesion_cases", "deletion_insertion", "evaluate_explanations", "format_table", "explain_json_path", "save", "load_report", "STEPS"]

STEPS = 10  # perturbation steps of the deletion/insertion curves


def explain_json_path(model_path: Path) -> Path:
    """Where the explanation scores of a model file are kept."""
    return model_path.with_suffix(".explain.json")


def lesion_cases(rows: Any, spec: Any, preprocessing: str = "unit",
                 limit: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Model-ready images and boolean lesion masks of the abnormal rows that have a non-empty mask.

    Args:
        rows: a dataset frame (xray_ai.data readers) with `path`, `label` and `mask_path`.
        spec: the model's InputSpec; preprocessing: its registry `preprocessing`.
        limit: stop after this many cases.

    Returns:
        (images, masks): float32 (H, W, C) arrays ready for the model, and bool masks at the
        mask file's own resolution.
    """
    from xray_ai.images.load import load_image
    from xray_ai.serving.preprocessing import prepare_batch

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


def _blurred(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    sigma = max(h, w) / 16.0
    out = cv2.GaussianBlur(x, (0, 0), sigma)
    return out.reshape(x.shape)


def deletion_insertion(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, heatmap: np.ndarray,
                       steps: int = STEPS) -> tuple[float, float]:
    """Areas under the deletion and insertion curves for one image.

    Args:
        predict: model-ready batch (N, H, W, C) -> probabilities (N,).
        x: one model-ready image (H, W, C).
        heatmap: 2-D map, any size (resized to H x W); ties broken by position.
        steps: number of equal pixel fractions removed / restored.

    Returns:
        (deletion AUC, insertion AUC), each in [0, 1] (mean probability over the curve).
    """
    h, w = x.shape[:2]
    saliency = cv2.resize(heatmap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR).ravel()
    order = np.argsort(-saliency, kind="stable")
    base = _blurred(x)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    deleted, inserted = [], []
    flat_x, flat_base = x.reshape(h * w, -1), base.reshape(h * w, -1)
    for f in fractions:
        top = order[: int(round(f * h * w))]
        d = flat_x.copy()
        d[top] = flat_base[top]
        i = flat_base.copy()
        i[top] = flat_x[top]
        deleted.append(d.reshape(x.shape))
        inserted.append(i.reshape(x.shape))
    probs = predict(np.stack(deleted + inserted).astype(np.float32))
    p_del, p_ins = probs[: steps + 1], probs[steps + 1 :]
    return float(np.trapezoid(p_del, fractions)), float(np.trapezoid(p_ins, fractions))


def evaluate_explanations(explainer: Any, predict: Callable[[np.ndarray], np.ndarray],
                          images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                          methods: Sequence[str], *, model_id: str = "",
                          progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Scores per method over abnormal images with lesion masks.

    Args:
        explainer: an xray_ai.explain.Explainer for the model.
        predict: model-ready batch -> probabilities (N,).
        images: model-ready images (H, W, C), abnormal cases only.
        masks: boolean lesion masks (any size), one per image, non-empty.
        methods: names from xray_ai.explain.METHODS.
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


def format_table(report: dict[str, Any]) -> str:
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
    path.write_text(json.dumps(report, indent=2) + "\n")


def load_report(path: Path) -> dict[str, Any] | None:
    """A saved report, or None when there is none or it cannot be read (the page says nothing then)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("methods"), dict) else None
