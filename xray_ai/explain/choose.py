"""A model's default heatmap, chosen on its validation split: which CAM method at which
layer(s) points at the finding most often, and at what level the overlay outlines it.

The candidates (`candidate_settings`) are Grad-CAM, HiResCAM and LayerCAM at the last layer
of each of the model's three coarsest output strides (32, 16 and 8 for every backbone here),
and the fusion of the two finer ones for each method (plus LayerCAM over all three). Each is scored on abnormal
validation images with lesion masks; the winner maximises the pointing game within 15 px at
224 (Zhang et al. 2016's tolerance), ties going to the cheaper setting (cam_math.cost_rank:
a coarser finest layer, fewer layers, then Grad-CAM < HiResCAM < LayerCAM). The contour
level is then the share of the peak whose outlined region overlaps the masks best (mean
Dice, scores.region_dice). Never the test split: its figures are measured afterwards.

`python -m xray_ai explain-eval --split valid --write-registry` and `train` (at the end of a
run on data with lesion masks) record the result as the registry entry's `heatmap` field.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from xray_ai.explain import scores
from xray_ai.explain.base import normalise_map
from xray_ai.explain.cam_math import CAM_METHODS, HeatmapSpec, combine, cost_rank

__all__ = ["CHOSEN_ON", "CONTOUR_LEVELS", "CRITERION", "candidate_settings", "setting_key", "localisation_scores",
           "compute_maps", "choose_heatmap", "with_test_figures"]

CHOSEN_ON = "validation split"
CRITERION = "pointing_game_tolerant: peak within 15 px at 224 of the lesion mask; ties: the cheaper setting"
CONTOUR_LEVELS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def setting_key(spec: HeatmapSpec, strides: Mapping[str, int]) -> str:
    """A short, stable name for tables: "layercam@16", "hirescam@16+8" (layer strides), or the
    layer paths where a layer's stride is unknown."""
    if not spec.layers:
        return f"{spec.method}@last"
    parts = [str(strides[p]) if p in strides else p for p in spec.layers]
    return f"{spec.method}@{'+'.join(parts)}"


def candidate_settings(by_stride: Mapping[int, str]) -> dict[str, HeatmapSpec]:
    """key -> HeatmapSpec of every candidate, cheapest first; `by_stride` as layers_by_stride gives it."""
    strides = {path: s for s, path in by_stride.items()}
    present = sorted(by_stride, reverse=True)[:3]  # coarsest first: 32, 16, 8
    specs = [HeatmapSpec(m, (by_stride[s],)) for m in CAM_METHODS for s in present]
    if len(present) >= 2:
        finer = tuple(by_stride[s] for s in present[-2:])
        specs += [HeatmapSpec(m, finer) for m in CAM_METHODS]
    if len(present) == 3:
        specs.append(HeatmapSpec("layercam", tuple(by_stride[s] for s in present)))
    specs.sort(key=lambda spec: cost_rank(spec, strides))
    return {setting_key(spec, strides): spec for spec in specs}


def compute_maps(model: Any, specs: Mapping[str, HeatmapSpec], images: Sequence[np.ndarray],
                 batch: int = 16) -> dict[str, list[np.ndarray]]:
    """key -> the [0, 1] heatmaps of each setting over model-ready images (H, W, C).

    One compiled pass per batch gives every layer's feature map and logit gradient the
    settings need (gradcam.build_feature_gradient_model); each setting's map is then
    cam_math.combine + base.normalise_map of them, as the ONNX Runtime backend computes it
    (and equal to GradCam's, tests/test_explain_cams.py). Settings with no layers
    (HeatmapSpec.default()) are taken at find_target_layer's layer.
    """
    import tensorflow as tf

    from xray_ai.explain.gradcam import build_feature_gradient_model, find_target_layer

    last = find_target_layer(model)
    resolved = {k: (spec, spec.layers or (last,)) for k, spec in specs.items()}
    layers = list(dict.fromkeys(p for _, paths in resolved.values() for p in paths))
    grad_model = build_feature_gradient_model(model, layers)

    @tf.function(reduce_retracing=True)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            *features, logit, _ = grad_model(x, training=False)
            score = tf.reduce_sum(logit)  # samples are independent: d(sum)/dA_i = d(logit_i)/dA_i
        grads = tape.gradient(score, features)
        return features, [tf.zeros_like(a) if g is None else g for a, g in zip(features, grads)]

    maps: dict[str, list[np.ndarray]] = {k: [] for k in specs}
    for start in range(0, len(images), batch):
        features, grads = step(tf.constant(np.stack(images[start : start + batch]), tf.float32))
        features, grads = [a.numpy() for a in features], [g.numpy() for g in grads]
        for key, (spec, paths) in resolved.items():
            index = [layers.index(p) for p in paths]
            raw = combine(spec, [features[i] for i in index], [grads[i] for i in index])
            maps[key].extend(normalise_map(r)[0] for r in raw)
    return maps


def localisation_scores(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> dict[str, float]:
    """Pointing game (strict and within 15 px at 224) and energy inside the mask."""
    return {
        "pointing_game": scores.pointing_game(maps, masks),
        "pointing_game_tolerant": scores.pointing_game(maps, masks, scores.POINTING_TOLERANCE),
        "energy_inside": scores.energy_inside(maps, masks),
    }


def choose_heatmap(model: Any, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
                   data: str = "", batch: int = 16,
                   progress: Callable[[str], None] | None = None) -> tuple[HeatmapSpec, dict[str, Any]]:
    """The default heatmap setting of `model`, chosen on validation images.

    Args:
        model: the keras classifier.
        images: model-ready abnormal *validation* images (H, W, C); masks: their lesion masks.
        data: what the images are, for the record (e.g. "phantoms-1.0 seed 116 size 224, valid split").
        batch: images per compiled call.
        progress: called with a line saying what is being scored.

    Returns:
        (spec, report): spec is the winner with its contour level and provenance (chosen_on,
        criterion, n, its scores, every candidate's 15-px pointing game), ready for the
        registry; report has every candidate's scores.

    Raises:
        ValueError: no images, or a model whose strides cannot be measured.
    """
    from xray_ai.explain.gradcam import layers_by_stride  # keras

    if not images:
        raise ValueError("no abnormal validation images with lesion masks to choose a heatmap on")
    by_stride = layers_by_stride(model)
    settings = candidate_settings(by_stride)
    if progress:
        progress(f"{len(settings)} settings on {len(images)} images")
    all_maps = compute_maps(model, settings, images, batch)
    results = {key: localisation_scores(all_maps[key], masks) for key in settings}
    # settings are cheapest first: max() keeps the first of equal scores
    best = max(settings, key=lambda k: results[k]["pointing_game_tolerant"])
    spec, maps = settings[best], all_maps[best]
    dice = {level: scores.region_dice(maps, masks, level) for level in CONTOUR_LEVELS}
    level = max(CONTOUR_LEVELS, key=lambda lv: dice[lv])
    strides = {path: s for s, path in by_stride.items()}
    provenance = {
        "strides": [strides[p] for p in spec.layers],
        "chosen_on": CHOSEN_ON,
        "criterion": CRITERION,
        "data": data,
        "n": len(images),
        **{k: round(v, 4) for k, v in results[best].items()},
        "contour_dice": round(dice[level], 4),
        "candidates": {k: round(r["pointing_game_tolerant"], 4) for k, r in results.items()},
        "created": _dt.date.today().isoformat(),
    }
    chosen = HeatmapSpec(spec.method, spec.layers, level, provenance)
    report = {"chosen": best, "n_images": len(images), "contour_dice": dice, "settings": results,
              "layers_by_stride": {str(s): p for s, p in by_stride.items()}}
    return chosen, report


def with_test_figures(spec: HeatmapSpec, figures: Mapping[str, Any], n: int) -> HeatmapSpec:
    """`spec` with its test-split figures (measured after the choice) added to its provenance."""
    test = {"split": "test", "n": n, **{k: round(float(figures[k]), 4) for k in
                                        ("pointing_game", "pointing_game_tolerant", "pointing_game_tolerant_detected",
                                         "energy_inside") if figures.get(k) is not None}}
    if figures.get("n_detected") is not None:
        test["n_detected"] = int(figures["n_detected"])
    return HeatmapSpec(spec.method, spec.layers, spec.contour_level, {**spec.provenance, "test": test})
