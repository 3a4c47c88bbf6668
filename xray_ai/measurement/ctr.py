"""The cardiothoracic ratio from two outlines: the widest horizontal diameter of the cardiac
silhouette over the widest internal diameter of the thorax (on a PA film; above 0.50 is
enlarged). Plain numpy and OpenCV: the phantom generator records its truth with it and
analyze() measures a segmentation model's masks with it.

Widths are measured row by row on soft masks (probabilities in [0, 1]): a row's width is
the sum of its probabilities over the outline's largest connected region, so an edge pixel
at 0.5 counts half and the width keeps sub-pixel accuracy at the model's grid. The widest
row is the diameter; its extreme columns (where the probability crosses one half) are the
ends of the line drawn on the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["CTR_RULE", "CTR_LIMIT", "WidthLine", "CtrMeasurement", "widest_row", "measure_ctr", "ctr_probability", "measure_batch"]

CTR_LIMIT = 0.50
CTR_RULE = "cardiothoracic ratio above 0.50 on a PA film (the clinical rule, not a learned threshold)"


@dataclass(frozen=True)
class WidthLine:
    """One horizontal diameter, in fractions of the image (0..1), so that it can be drawn
    at any display size: the row's centre and the two ends' left edges/right edges."""

    row: float
    left: float
    right: float

    def to_json(self) -> dict:
        return {"row": round(self.row, 5), "left": round(self.left, 5), "right": round(self.right, 5)}


@dataclass(frozen=True)
class CtrMeasurement:
    """The CTR of one view and what it was measured on.

    Attributes:
        ctr: cardiac over thoracic width.
        cardiac_width_px, thoracic_width_px: the two widest diameters in the image's own
            pixels (the model measures at its input grid and the widths are scaled back by
            the image's width over the grid's; horizontal scaling leaves the ratio as it is).
        cardiac_line, thoracic_line: where the two diameters lie (WidthLine).
        heart, thorax: the soft masks (float32 in [0, 1], the model's grid), for the outlines.
    """

    ctr: float
    cardiac_width_px: float
    thoracic_width_px: float
    cardiac_line: WidthLine
    thoracic_line: WidthLine
    heart: np.ndarray
    thorax: np.ndarray

    def to_json(self) -> dict:
        return {"ctr": round(self.ctr, 4), "cardiac_width_px": round(self.cardiac_width_px, 1),
                "thoracic_width_px": round(self.thoracic_width_px, 1),
                "cardiac_line": self.cardiac_line.to_json(), "thoracic_line": self.thoracic_line.to_json()}


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a boolean mask (all False when it has none)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(mask, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def widest_row(prob: np.ndarray) -> tuple[float, WidthLine] | None:
    """(width in grid pixels, its line) of the widest row of a soft mask's largest region;
    None when nothing reaches one half."""
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {prob.shape}")
    region = _largest_region(prob > 0.5)
    if not region.any():
        return None
    # the region, grown by a pixel so that its soft edge counts, and nothing else in the row
    support = cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    # rows the region itself crosses (the grown support reaches a row beyond it)
    widths = np.where(region.any(axis=1), (prob * support).sum(axis=1), -1.0)
    row = int(np.argmax(widths))
    cols = np.flatnonzero(region[row])
    height, width = prob.shape
    line = WidthLine(row=(row + 0.5) / height, left=cols[0] / width, right=(cols[-1] + 1) / width)
    return float(widths[row]), line


def measure_ctr(heart: np.ndarray, thorax: np.ndarray, image_width_px: int | None = None) -> CtrMeasurement | None:
    """The CTR from a heart and a thorax mask of one grid (soft or boolean); None when either
    outline is missing. `image_width_px`: the width of the image the masks cover (default:
    the grid's), so that the widths come out in the image's pixels."""
    heart, thorax = np.asarray(heart, np.float32), np.asarray(thorax, np.float32)
    if heart.shape != thorax.shape:
        raise ValueError(f"heart and thorax masks differ in shape: {heart.shape} and {thorax.shape}")
    cardiac, thoracic = widest_row(heart), widest_row(thorax)
    if cardiac is None or thoracic is None or thoracic[0] <= 0:
        return None
    scale = (image_width_px or heart.shape[1]) / heart.shape[1]
    return CtrMeasurement(ctr=cardiac[0] / thoracic[0], cardiac_width_px=cardiac[0] * scale,
                          thoracic_width_px=thoracic[0] * scale, cardiac_line=cardiac[1],
                          thoracic_line=thoracic[1], heart=heart, thorax=thorax)


def ctr_probability(ctr: float, entry) -> float:
    """A measurement model's calibrated probability of an enlarged heart at this CTR: the
    logistic curve of its registry entry's `measurement` (0.5 at the rule's `limit`, slope
    `calibration_scale` fitted on the validation split)."""
    m = entry.measurement or {}
    limit, scale = float(m.get("limit", CTR_LIMIT)), float(m["calibration_scale"])
    return float(1.0 / (1.0 + np.exp(-(ctr - limit) / scale)))


def measure_batch(entry, masks: np.ndarray, widths) -> tuple[list[CtrMeasurement | None], np.ndarray]:
    """Each image's CtrMeasurement (None where an outline is missing) and calibrated probability
    (0.0 there, kept for the record) from a batch of masks (N, S, S, 2: heart, thorax) and each
    image's width in its own pixels."""
    measured = [measure_ctr(m[..., 0], m[..., 1], int(w)) for m, w in zip(masks, widths)]
    return measured, np.array([ctr_probability(m.ctr, entry) if m else 0.0 for m in measured])
