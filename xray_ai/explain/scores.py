"""How far to trust a heatmap: localisation and faithfulness scores, per image and per method.

On abnormal images that carry a lesion mask (the phantoms do):

- pointing game: share of images whose map peaks inside the lesion mask (or near it, in the
  tolerant game);
- energy inside: mean share of the map's mass inside the mask;
- deletion / insertion (Petsiuk et al. 2018): the model's probability as the most salient
  pixels are progressively replaced by a blurred copy of the image (deletion; a faithful
  map makes it fall fast, so lower area is better), or restored into the blurred copy
  (insertion; higher is better). Blurring rather than blacking out keeps the perturbed
  images closer to radiographs (the concern ROAD raises about out-of-distribution masks);
- region Dice: overlap of the hot region the overlay outlines (the connected part above a
  share of the peak that holds the peak) with the mask; it picks a model's contour level;
- seconds per image.

xray_ai.explain.evaluate gives all of them for each method (`evaluate_explanations`), picks
the images, prints the table and keeps the report (README, "Explanations and how far to
trust them"). No tensorflow here: training scores its Grad-CAM with the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["POINTING_TOLERANCE", "STEPS", "pointing_game", "energy_inside", "region_dice", "deletion_insertion"]

# Zhang et al. (2016), "Top-down neural attention by excitation backprop": a hit when the
# maximum lies within 15 pixels of the object, on inputs of about 224 pixels.
POINTING_TOLERANCE = 15 / 224

STEPS = 10  # perturbation steps of the deletion/insertion curves


# --------------------------------------------------------------------------- localisation


def _localisation_pairs(heatmaps: Sequence[Any], masks: Sequence[Any]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    # Yields (heatmap resized to the mask, mask) for each abnormal image.
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


def region_dice(heatmaps: Sequence[Any], masks: Sequence[Any], level: float) -> float:
    """Mean Dice overlap of each map's strongest hot region with its lesion mask.

    The region is what xray_ai.outputs.overlay outlines and boxes: the map (resized to the
    mask) at or above `level` x its peak, the connected component (8-connected) that holds
    the peak. A flat map has no region and scores 0.

    Args:
        heatmaps, masks: as for `pointing_game`.
        level: share of the peak, in (0, 1].

    Returns:
        Mean Dice in [0, 1] over abnormal images.
    """
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must be in (0, 1], got {level!r}")
    dice = []
    for h, m in _localisation_pairs(heatmaps, masks):
        peak = float(h.max())
        if peak <= float(h.min()):
            dice.append(0.0)
            continue
        _, labels = cv2.connectedComponents((h >= level * peak).astype(np.uint8), connectivity=8)
        region = labels == labels.flat[int(np.argmax(h))]
        dice.append(float(2.0 * np.sum(region & m) / (region.sum() + m.sum())))
    return float(np.mean(dice))


# --------------------------------------------------------------------------- faithfulness


def _blurred(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    sigma = max(h, w) / 16.0
    out = cv2.GaussianBlur(x, (0, 0), sigma)
    return out.reshape(x.shape)  # GaussianBlur drops a trailing channel axis of 1


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
    probs = predict(np.stack(deleted + inserted).astype(np.float32))  # both curves in one batch
    p_del, p_ins = probs[: steps + 1], probs[steps + 1 :]
    return float(np.trapezoid(p_del, fractions)), float(np.trapezoid(p_ins, fractions))


# --------------------------------------------------------------------------- per method
