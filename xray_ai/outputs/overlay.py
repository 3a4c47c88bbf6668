"""Heatmap overlay for display: colour blending with intensity, finding boxes, markers.

`render_overlay` is called on every move of the app's intensity slider, so it works at the
image's own resolution with OpenCV primitives and a lookup table (about 25-35 ms for a
2000 x 2000 image with annotations on two cores; tests/test_overlay.py bounds it).
Intensity scales only the colour layer: at 0 the output is exactly the grayscale image;
the automatic mark, the manual markers and the placeholder watermark are drawn on top.

The automatic mark follows the decision: the caller passes the view's finding level
(`AnalysisResult.finding_level`) and the heatmap's strongest region gets a solid box
"finding", a dotted box "possible finding", or nothing; `finding_legend` says which is
which. The heatmap may come at any grid (7 x 7 from a stride-32 layer, 28 x 28 from a
stride-8 one): it is upsampled bilinearly from its own grid to the image. With a model's
`contour_level` (its registry `heatmap` field, chosen on validation) the region is cut at
that share of the peak and its outline is drawn inside the box. A flat map (its values
within FLAT_RANGE of its peak, an all-zero map among them) has no strongest region: no box.
A measurement model's view (cardiomegaly's CTR) gets its outlines and diameters instead of a
box (`measurement_display.draw_measurement`). Lines and labels are fractions of the image's
size (a label too small to read is left out); `display_pixels` upscales a small image for the
screen and the PDF. `xray_ai.outputs.view_overlay` says which of these a result's view gets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from xray_ai.outputs.drawing import BLACK, draw_label, line_type, mark_scale, strokes
from xray_ai.outputs.measurement_display import draw_measurement, measurement_legend
from xray_ai.outputs.watermark import draw_watermark
from xray_ai.result import FINDING, PLACEHOLDER_WATERMARK, POSSIBLE_FINDING, AnalysisResult

__all__ = ["Marker", "render_overlay", "strongest_region", "to_rgb8", "display_pixels", "finding_legend",
           "COLORMAPS", "DISPLAY_MIN_SIDE", "FLAT_RANGE"]

# Colours are RGB (the output of render_overlay is RGB, not OpenCV's BGR).
_BOX = (255, 230, 0)
_MARKER = (0, 255, 255)
# Annotation geometry is computed on a copy of the heatmap no larger than this (long side),
# then scaled to the image: exact enough for a box, and cheap on a 2000 px image.
_WORK_SIDE = 512
DISPLAY_MIN_SIDE = 512  # display_pixels upscales a smaller image to this shorter side
#: A map whose max - min is at most this share of its max is flat: it points nowhere.
FLAT_RANGE = 0.02

COLORMAPS: tuple[str, ...] = tuple(
    sorted(name[len("COLORMAP_"):].lower() for name in dir(cv2) if name.startswith("COLORMAP_"))
)


@dataclass(frozen=True)
class Marker:
    """A clinician's manual marker.

    Attributes:
        x: horizontal position as a fraction of the image width, 0 (left) .. 1 (right).
        y: vertical position as a fraction of the image height, 0 (top) .. 1 (bottom).
        label: short free text shown next to the marker's number.
        view: index of the study view (0-based, as in AnalysisResult.views) the marker was
            placed on; render_overlay draws every marker it is given, the report draws each
            marker on its own view only.
    """

    x: float
    y: float
    label: str = ""
    view: int = 0


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """The grayscale image as displayed: uint8 H x W x 3, round(clip(image, 0, 1) * 255).

    Args:
        image: float array H x W, values in [0, 1] (values outside are clipped).

    Returns:
        uint8 array H x W x 3 with three equal channels.
    """
    gray = _gray8(_check_image(image))
    return np.repeat(gray[:, :, None], 3, axis=2)


def strongest_region(heatmap: np.ndarray, shape: tuple[int, ...],
                     threshold_level: float = 0.5) -> tuple[int, int, int, int] | None:
    """Bounding box of the strongest hot region of a heatmap, in image pixel coordinates.

    The heatmap is resized (bilinear) to the image and thresholded at
    `threshold_level * max`; the strongest region is the connected component that holds the
    heatmap's maximum. The region is traced on a copy at most 512 px on its long side, so the
    box is exact to within one such pixel (4 px on a 2000 px image).

    Args:
        heatmap: float array h x w in [0, 1], any size.
        shape: the image shape (H, W) or (H, W, C) the box refers to.
        threshold_level: fraction of the heatmap maximum that counts as hot, in (0, 1].

    Returns:
        (x0, y0, x1, y1) with 0 <= x0 <= x1 < W and 0 <= y0 <= y1 < H (inclusive corners),
        or None when the heatmap is flat (no positive value, or all values within
        FLAT_RANGE of its peak).
    """
    found = _region(_check_heatmap(heatmap), (int(shape[0]), int(shape[1])), threshold_level)
    return None if found is None else found[0]


def render_overlay(
    image: np.ndarray,
    heatmap: np.ndarray | None,
    intensity: float = 0.5,
    *,
    colormap: str = "jet",
    annotate: bool = True,
    finding: str | None = None,
    probability: float | None = None,
    markers: Sequence[Marker] = (),
    placeholder: bool = False,
    threshold_level: float = 0.5,
    contour_level: float | None = None,
    measurement: Any = None,
) -> np.ndarray:
    """Blend a heatmap onto a radiograph and draw the finding box, markers and watermark.

    Blend per pixel: `out = (1 - a * h) * gray + a * h * colour(h)`, with `a = intensity` and
    `h` the heatmap resized to the image, so cold areas keep the plain radiograph and the
    hottest areas turn fully coloured at intensity 1. Intensity 0 returns `to_rgb8(image)`
    unchanged (before any annotation).

    Args:
        image: float array H x W in [0, 1], bone bright.
        heatmap: float array h x w in [0, 1], any size (resized bilinearly to H x W), or None
            for no colour and no automatic annotation.
        intensity: strength of the colour layer, 0..1.
        colormap: an OpenCV colormap name, e.g. "jet", "turbo", "inferno" (see COLORMAPS).
        annotate: the switch for the automatic annotation (the box, or a measurement's
            outlines and lines); off draws none.
        finding: the view's finding level, `AnalysisResult.finding_level(view)`: FINDING
            draws a solid box labelled "finding" round the strongest hot region,
            POSSIBLE_FINDING a dotted box labelled "possible finding", None no box (the
            default: nothing is marked unless the decision says so).
        probability: when given with a finding, the label adds it ("finding p=0.87").
        markers: manual markers, drawn numbered from 1 with their labels.
        placeholder: draw the PLACEHOLDER_WATERMARK across the image (untrained model).
        threshold_level: fraction of the heatmap maximum that counts as hot, in (0, 1].
        contour_level: the model's level (its registry `heatmap.contour_level`, chosen on
            validation), in (0, 1]: given, it replaces threshold_level and the hot region's
            outline is drawn inside the box. None: a box only, at threshold_level.
        measurement: a measurement model's reading of the view (`ViewResult.measurement`, a
            CtrMeasurement): with annotate on, its heart and thorax outlines, the two widest
            diameters with their lengths and the ratio are drawn (under the markers and the
            watermark). None: nothing of the kind.

    Returns:
        uint8 array H x W x 3 (RGB) at the image's own resolution.

    Raises:
        ValueError: intensity outside [0, 1], an unknown colormap, an image or heatmap that
            is not 2-D, threshold_level or contour_level outside (0, 1], or an unknown
            finding level.
    """
    intensity = float(intensity)
    if not 0.0 <= intensity <= 1.0:  # also rejects NaN
        raise ValueError(f"intensity must be in [0, 1], got {intensity!r}")
    if not 0.0 < threshold_level <= 1.0:
        raise ValueError(f"threshold_level must be in (0, 1], got {threshold_level!r}")
    if contour_level is not None and not 0.0 < contour_level <= 1.0:
        raise ValueError(f"contour_level must be in (0, 1], got {contour_level!r}")
    if finding not in (None, FINDING, POSSIBLE_FINDING):
        raise ValueError(f"finding must be {FINDING!r}, {POSSIBLE_FINDING!r} or None, got {finding!r}")
    cmap = _colormap_code(colormap)
    gray = _gray8(_check_image(image))
    height, width = gray.shape
    heat = None if heatmap is None else _check_heatmap(heatmap)

    if heat is not None and intensity > 0.0:
        full = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
        out = _blend(gray, cv2.convertScaleAbs(full, alpha=255.0), intensity, cmap)
    else:
        out = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)

    scale = mark_scale(height, width)
    if annotate and finding is not None and heat is not None:
        found = _region(heat, (height, width), threshold_level if contour_level is None else contour_level)
        if found is not None:
            box, component = found
            if contour_level is not None:
                _draw_outline(out, component, scale)
            label = finding if probability is None else f"{finding} p={float(probability):.2f}"
            _draw_box(out, box, dotted=finding == POSSIBLE_FINDING, label=label, scale=scale)
    if annotate and measurement is not None:
        draw_measurement(out, measurement, scale)
    for number, marker in enumerate(markers, start=1):
        _draw_marker(out, number, marker, scale)
    if placeholder:
        draw_watermark(out, PLACEHOLDER_WATERMARK)
    return out


def display_pixels(image: np.ndarray, min_side: int = DISPLAY_MIN_SIDE) -> np.ndarray:
    """The image upscaled (bilinear) so its shorter side is at least `min_side`; as it is when
    already that large. For the screen and the PDF, which show a 64 px image large anyway:
    drawn at this size its box labels and markers are legible."""
    image = _check_image(image)
    height, width = image.shape
    factor = min_side / max(1, min(height, width))
    if factor <= 1.0:
        return image
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image.astype(np.float32, copy=False), size, interpolation=cv2.INTER_LINEAR)


def finding_legend(result: AnalysisResult) -> tuple[str, ...]:
    """What the automatic marks mean for this result's model: one plain sentence per style
    (for a measurement model, what its outlines and lines are)."""
    if getattr(result, "kind", "classifier") == "measurement":  # a stand-in without `kind`: a classifier
        return measurement_legend(result)
    solid = (f"Solid box, \"{FINDING}\": the view's probability is at or above the operating point "
             f"({result.threshold:.3f}, {result.threshold_method}).")
    low = result.high_sensitivity_threshold
    if low is not None and low < result.threshold:
        dotted = (f"Dotted box, \"{POSSIBLE_FINDING}\": between the high-sensitivity point ({low:.3f}) "
                  f"and the operating point.")
    else:
        dotted = (f"Dotted box, \"{POSSIBLE_FINDING}\": not used by this model (it has no high-sensitivity "
                  "point below its operating point).")
    none = ("No box: below both points, a view out of the model's scope, a study that is not assessable, "
            "or a placeholder model. A box outlines the heatmap's strongest region, not a measured lesion.")
    return solid, dotted, none


# --- checks and conversions -------------------------------------------------------------


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D grayscale array H x W, got shape {image.shape}")
    return image


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2 or 0 in heatmap.shape:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {heatmap.shape}")
    heat = np.nan_to_num(heatmap.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(heat, 0.0, 1.0, out=heat)


def _gray8(image: np.ndarray) -> np.ndarray:
    # convertScaleAbs rounds half to even, as np.rint does: to_rgb8's promise holds.
    return cv2.convertScaleAbs(np.clip(image.astype(np.float32, copy=False), 0.0, 1.0), alpha=255.0)


def _blend(gray: np.ndarray, heat: np.ndarray, intensity: float, cmap: int) -> np.ndarray:
    """(1 - a*h) * gray + a*h * colour(h) for uint8 gray and heat H x W -> uint8 H x W x 3.

    The result depends only on the pair (heat level, gray level), so it is computed once
    for all 256 x 256 pairs and looked up per pixel: about half the time of blending
    2000 x 2000 x 3 floats.
    """
    levels = np.arange(256, dtype=np.float32)
    colours = cv2.applyColorMap(levels.astype(np.uint8)[:, None], cmap)[:, 0, ::-1]  # RGB
    weight = (intensity / 255.0) * levels[:, None, None]  # heat level -> a * h
    table = np.zeros((256, 256, 4), dtype=np.uint8)  # [heat, gray] -> R, G, B, pad
    blended = (1.0 - weight) * levels[None, :, None] + weight * colours[:, None, :]
    table[..., :3] = np.rint(blended)
    index = (heat.astype(np.uint16) << 8) | gray
    # One 4-byte gather per pixel, then drop the pad byte.
    packed = np.take(table.view(np.uint32).reshape(-1), index)
    return cv2.cvtColor(packed.view(np.uint8).reshape(*gray.shape, 4), cv2.COLOR_RGBA2RGB)


def _colormap_code(name: str) -> int:
    code = getattr(cv2, f"COLORMAP_{str(name).upper()}", None)
    if code is None:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    return int(code)


# --- automatic annotation ----------------------------------------------------------------


def _region(heat: np.ndarray, shape: tuple[int, int],
            threshold_level: float) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """(bounding box (x0, y0, x1, y1, inclusive) in image pixels, the region as a uint8 mask
    at the work size) of the strongest hot region, or None for a flat map."""
    top, bottom = float(heat.max()), float(heat.min())
    if top <= 0.0 or top - bottom <= FLAT_RANGE * top:
        return None
    height, width = shape
    factor = min(1.0, _WORK_SIDE / max(height, width))
    work_w, work_h = max(1, round(width * factor)), max(1, round(height * factor))
    work = cv2.resize(heat, (work_w, work_h), interpolation=cv2.INTER_LINEAR)
    peak = float(work.max())
    mask = (work >= threshold_level * peak).astype(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    peak_y, peak_x = np.unravel_index(int(np.argmax(work)), work.shape)
    component = (labels == labels[peak_y, peak_x]).astype(np.uint8)
    bx, by, bw, bh = cv2.boundingRect(component)
    sx, sy = width / work_w, height / work_h
    box = (
        int(math.floor(bx * sx)),
        int(math.floor(by * sy)),
        min(width - 1, int(math.ceil((bx + bw) * sx)) - 1),
        min(height - 1, int(math.ceil((by + bh) * sy)) - 1),
    )
    return box, component


def _draw_outline(out: np.ndarray, component: np.ndarray, scale: float) -> None:
    """The hot region's outline (traced at the work size, scaled to the image), dark under light."""
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    height, width = out.shape[:2]
    sx, sy = width / component.shape[1], height / component.shape[0]
    scaled = [np.rint((c.astype(np.float64) + 0.5) * (sx, sy) - 0.5).astype(np.int32) for c in contours]
    thick, halo = strokes(scale)
    thin = max(1, thick // 2)
    kind = line_type(thin)
    cv2.polylines(out, scaled, True, BLACK, thin + max(0, halo - thick), kind)
    cv2.polylines(out, scaled, True, _BOX, thin, kind)


def _draw_box(out: np.ndarray, box: tuple[int, int, int, int], *, dotted: bool, label: str, scale: float) -> None:
    """A solid or dotted box (a dark stroke under a light one: visible on bright bone and on
    red heat) with its label above it."""
    thick, halo = strokes(scale)
    kind = line_type(thick)
    x0, y0, x1, y1 = box
    corners = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)], dtype=np.float64)
    dash = max(2, 2 * thick)  # dots: dashes two lines long, gaps as long plus the round caps
    period = 2 * dash + halo
    for colour, width in ((BLACK, halo), (_BOX, thick)):
        if not dotted:
            cv2.rectangle(out, (x0, y0), (x1, y1), colour, width, kind)
            continue
        for a, b in zip(corners[:-1], corners[1:]):
            length = max(float(np.hypot(*(b - a))), 1.0)
            for start in np.arange(0.0, length, period):
                p, q = (a + (b - a) * t / length for t in (start, min(start + dash, length)))
                cv2.line(out, tuple(int(v) for v in np.rint(p)), tuple(int(v) for v in np.rint(q)),
                         colour, width, kind)
    draw_label(out, label, (x0, y0 - halo // 2), scale, above=True)


def _draw_marker(out: np.ndarray, number: int, marker: Marker, scale: float) -> None:
    height, width = out.shape[:2]
    cx = int(round(min(max(float(marker.x), 0.0), 1.0) * (width - 1)))
    cy = int(round(min(max(float(marker.y), 0.0), 1.0) * (height - 1)))
    thick, halo = strokes(scale)
    radius = max(2, int(round(12 * scale)))
    arm = radius + max(1, int(round(8 * scale)))
    for colour, add in ((BLACK, halo - thick), (_MARKER, 0)):
        cv2.circle(out, (cx, cy), radius, colour, thick + add, cv2.LINE_AA)
        cv2.line(out, (cx - arm, cy), (cx - radius // 2, cy), colour, thick + add, cv2.LINE_AA)
        cv2.line(out, (cx + radius // 2, cy), (cx + arm, cy), colour, thick + add, cv2.LINE_AA)
        cv2.line(out, (cx, cy - arm), (cx, cy - radius // 2), colour, thick + add, cv2.LINE_AA)
        cv2.line(out, (cx, cy + radius // 2), (cx, cy + arm), colour, thick + add, cv2.LINE_AA)
    text = f"{number} {marker.label}".strip()
    draw_label(out, text, (cx + arm, cy + arm // 2), scale, above=False)
