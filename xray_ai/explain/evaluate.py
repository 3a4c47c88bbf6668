"""The heatmap-trust report around the scores (xray_ai.explain.scores): which images it is
measured on, every method scored on them, how it is printed, and where it is kept.

`python -m xray_ai explain-eval --model ID --data DIR` prints the table and writes the JSON
beside the model file (`<model>.explain.json`, named by xray_ai.serving.artifacts), where
the performance page finds it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from xray_ai.explain.scores import POINTING_TOLERANCE, STEPS, deletion_insertion, energy_inside, pointing_game
from xray_ai.images import load_image
from xray_ai.serving import artifacts
from xray_ai.serving.preprocessing import prepare_batch

__all__ = ["lesion_cases", "evaluate_explanations", "format_table", "heatmap_table", "read_heatmap_table",
           "explain_json_path", "choice_json_path", "save", "load_report"]


def explain_json_path(model_path: str | Path) -> Path:
    """Where the explanation scores of a model file are kept."""
    return artifacts.explain_path(model_path)


def choice_json_path(model_path: str | Path) -> Path:
    """Where explain-eval keeps the validation run that chose a model's default heatmap."""
    path = explain_json_path(model_path)
    return path.with_name(path.name.replace(".explain.json", ".heatmap-choice.json"))


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
        f"{'method':16s} {'pointing':>9s} {'<=15px@224':>10s} {'15px det.':>10s} {'energy in':>10s} {'deletion':>9s} "
        f"{'insertion':>10s} {'ms/image':>9s} {'n':>5s}",
    ]

    def num(value: Any, width: int) -> str:
        return f"{value:{width}.3f}" if isinstance(value, (int, float)) else f"{'-':>{width}s}"

    for method, r in report["methods"].items():
        mark = " *" if method == report.get("default") else ""
        lines.append(
            f"{method + mark:16s} {num(r['pointing_game'], 9)} {num(r['pointing_game_tolerant'], 10)} "
            f"{num(r.get('pointing_game_tolerant_detected'), 10)} {num(r['energy_inside'], 10)} {num(r.get('deletion_auc'), 9)} {num(r.get('insertion_auc'), 10)} "
            f"{1000 * r['seconds_per_image']:9.1f} {r.get('n', report['n_images']):5d}"
        )
    if report.get("default"):
        lines.append(f"* the model's default heatmap ({report['default']}, chosen on the validation split)")
    lines.append("pointing game / energy inside / insertion: higher is better; deletion: lower is better; "
                 "15px det.: on the images the model calls positive")
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
                          settings: Mapping[str, Any] | None = None, faithfulness_images: int | None = None,
                          limits: Mapping[str, int] | None = None, threshold: float | None = None,
                          progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Scores per method (and per heatmap setting) over abnormal images with lesion masks.

    Args:
        explainer: an xray_ai.explain.methods.Explainer for the model.
        predict: model-ready batch -> probabilities (N,).
        images: model-ready images (H, W, C), abnormal cases only.
        masks: boolean lesion masks (any size), one per image, non-empty.
        methods: ids from xray_ai.explain.base.METHODS.
        settings: extra rows, key -> cam_math.HeatmapSpec (e.g. choose.candidate_settings),
            each computed by `explainer.cam_for(spec)` one image at a time, as methods are.
        faithfulness_images: deletion/insertion on the first this many images only (they
            cost 2 x (STEPS + 1) model runs per image); default all.
        limits: method id or setting key -> at most this many images for that row (LIME).
        threshold: the model's operating point: given, each row also scores the pointing game
            within 15 px on the images the model calls positive (`..._detected`, `n_detected`):
            a map cannot point at a finding its model does not see.

    Returns:
        {"model_id", "n_images", "steps", "created", "methods": {row: {pointing_game,
        pointing_game_tolerant, energy_inside, deletion_auc, insertion_auc,
        seconds_per_image, n, n_faithfulness, layer, [pointing_game_tolerant_detected,
        n_detected]}}}.
    """
    if not images:
        raise ValueError("no abnormal images to evaluate explanations on")
    detected = None
    if threshold is not None:
        probs = np.concatenate([predict(np.stack(images[k : k + 32])) for k in range(0, len(images), 32)])
        detected = probs >= threshold
    rows: list[tuple[str, Callable[[np.ndarray], tuple[np.ndarray, str | None]]]] = []
    for method in methods:
        rows.append((method, lambda x, m=method: (lambda e: (e.heatmap, e.target_layer))(explainer.explain(x[None], m))))
    for key, spec in (settings or {}).items():
        cam = explainer.cam_for(spec)
        rows.append((key, lambda x, cam=cam: (lambda o: (o.heatmaps[0], o.target_layer))(cam(x[None]))))
    results: dict[str, Any] = {}
    for key, explain in rows:
        n = min(len(images), (limits or {}).get(key, len(images)))
        n_faith = min(n, faithfulness_images if faithfulness_images is not None else n)
        explain(images[0])  # the first call builds and traces: not timed
        maps, seconds, deletion, insertion, layer = [], [], [], [], None
        for i, x in enumerate(images[:n]):
            start = time.perf_counter()
            heatmap, layer = explain(x)
            seconds.append(time.perf_counter() - start)
            maps.append(heatmap)
            if i < n_faith:
                d, ins = deletion_insertion(predict, x, heatmap)
                deletion.append(d)
                insertion.append(ins)
            if progress:
                progress(key, i + 1)
        results[key] = {
            "pointing_game": pointing_game(maps, masks[:n]),
            "pointing_game_tolerant": pointing_game(maps, masks[:n], POINTING_TOLERANCE),  # 15 px at 224
            "energy_inside": energy_inside(maps, masks[:n]),
            "deletion_auc": float(np.mean(deletion)) if deletion else None,
            "insertion_auc": float(np.mean(insertion)) if insertion else None,
            "seconds_per_image": float(np.median(seconds)),
            "n": n,
            "n_faithfulness": n_faith,
            "layer": layer,
        }
        if detected is not None:
            seen = [i for i in range(n) if detected[i]]
            results[key]["n_detected"] = len(seen)
            results[key]["pointing_game_tolerant_detected"] = (
                pointing_game([maps[i] for i in seen], [masks[i] for i in seen], POINTING_TOLERANCE) if seen else None)
    return {
        "model_id": model_id,
        "n_images": len(images),
        "steps": STEPS,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "methods": results,
    }


def read_heatmap_table(model_path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(report, heatmap_table(report)) of the saved report beside a model file, or None; cached
    by the file's identity, so a page can call it on every rerun without reading the file."""
    path = explain_json_path(model_path)
    try:
        stat = path.stat()
    except OSError:
        return None
    return _read_table(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _read_table(path: str, mtime_ns: int, size: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    report = load_report(Path(path))
    return None if report is None else (report, heatmap_table(report))


def heatmap_table(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A saved report's rows as the performance page shows them: one dict per method or
    setting, "method" (the model's default marked "(default)"), then pointing_game (strict),
    pointing_game_tolerant (within 15 px at 224), pointing_game_tolerant_detected (the same on
    the images the model calls positive), energy_inside, deletion_auc (lower is
    better), insertion_auc, ms_per_image, n and layer; a figure the report lacks is None."""
    default = report.get("default")
    table = []
    for key, r in report.get("methods", {}).items():
        if not isinstance(r, Mapping):
            continue
        seconds = r.get("seconds_per_image")
        table.append({
            "method": key + (" (default)" if key == default else ""),
            **{k: r.get(k) for k in ("pointing_game", "pointing_game_tolerant", "pointing_game_tolerant_detected",
                                     "energy_inside", "deletion_auc", "insertion_auc")},
            "ms_per_image": None if seconds is None else round(1000 * seconds, 1),
            "n": r.get("n", report.get("n_images")),
            "layer": r.get("layer"),
        })
    return table
