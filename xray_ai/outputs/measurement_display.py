"""How a measurement model's result is shown: the cardiothoracic ratio drawn on a view, and
the few phrases every output (app, PDF report, CLI, DICOM banner) writes it with.

Drawn on a view (`draw_measurement`, called by `overlay.render_overlay` in place of the
heatmap's box): the thorax's and the heart's outlines (the model's soft masks resized to the
image and cut at one half, as `measurement.ctr` cuts them), the two widest diameters at
their rows with end ticks, each labelled with its length in the image's own pixels, and the
ratio in the top-left corner. Strokes and text scale with the image (`drawing.mark_scale`),
so the app's screen copy and the full-resolution PDF and Secondary Capture look alike.

The decision shown beside the ratio is always the result's own (`AnalysisResult.decision`,
the clinical rule applied by the analysis); nothing here compares the ratio with the limit.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from xray_ai.measurement.ctr import CTR_LIMIT
from xray_ai.outputs.drawing import BLACK, draw_label, line_type, strokes
from xray_ai.result import AnalysisResult, ViewResult

__all__ = ["HEART_COLOUR", "THORAX_COLOUR", "CTR_RULE_SHORT", "NOT_MEASURED", "study_ctr", "ctr_headline",
           "widths_text", "view_ctr_text", "measurement_legend", "draw_measurement"]

# RGB, with the names the legend uses for them; neither is the box's yellow or the markers' cyan
HEART_COLOUR = (255, 60, 60)  # red
THORAX_COLOUR = (40, 230, 90)  # green
CTR_RULE_SHORT = f"rule: CTR > {CTR_LIMIT:.2f}"
NOT_MEASURED = "not measured (the heart or thorax outline was not found)"


# --- text ----------------------------------------------------------------------------------


def study_ctr(result: AnalysisResult) -> float | None:
    """The study's cardiothoracic ratio (mean of the counted views'), None when no view was
    measured or the result is a classifier's."""
    figures = result.measurements
    return None if figures is None else float(figures["ctr"])


def ctr_headline(result: AnalysisResult) -> str | None:
    """The main figure of a measurement result, one line: "Cardiothoracic ratio 0.56:
    cardiomegaly (rule: CTR > 0.50)"; for a study that is not assessable the ratio is said
    to be unreliable and no decision is given. None for a classifier."""
    if result.kind != "measurement":
        return None
    ctr = study_ctr(result)
    if not result.assessable:
        said = NOT_MEASURED if ctr is None else f"{ctr:.2f}"
        return f"Cardiothoracic ratio {said} (model output, unreliable for these images)"
    if ctr is None:
        return f"Cardiothoracic ratio {NOT_MEASURED}: {result.decision}"
    return f"Cardiothoracic ratio {ctr:.2f}: {result.decision} ({CTR_RULE_SHORT})"


def widths_text(result: AnalysisResult) -> str | None:
    """"cardiac 412 px, thoracic 905 px" (the study's widest diameters in the image's pixels,
    a mean where several views were measured); None where there is no measurement."""
    figures = result.measurements
    if figures is None:
        return None
    measured = sum(1 for v in result.views if v.measurement is not None) > 1
    return (f"cardiac {figures['cardiac_width_px']:.0f} px, thoracic {figures['thoracic_width_px']:.0f} px"
            + (" (means over the measured views)" if measured else ""))


def view_ctr_text(view: ViewResult) -> str:
    """One view's reading: "CTR 0.56 (cardiac 412 px, thoracic 905 px)" or "CTR not measured"."""
    m = view.measurement
    if m is None:
        return "CTR not measured"
    return f"CTR {m.ctr:.2f} (cardiac {m.cardiac_width_px:.0f} px, thoracic {m.thoracic_width_px:.0f} px)"


def measurement_legend(result: AnalysisResult) -> tuple[str, ...]:
    """What the drawn outlines and lines mean: one plain sentence each (cf. finding_legend)."""
    return (
        "Red outline: the cardiac silhouette; green outline: the inside of the thorax (the measurement "
        "model's outlines, cut at one half).",
        "Lines: the widest cardiac and the widest internal thoracic diameter, each labelled with its length "
        f"in the image's pixels; the cardiothoracic ratio is the first over the second. Rule: {result.threshold_method}.",
        "No outlines: a view out of the model's scope, a study that is not assessable, a placeholder model, or a "
        "view whose outlines were not found. The outlines are the model's segmentation, to be checked on the image.",
    )


# --- drawing -------------------------------------------------------------------------------


def draw_measurement(out: np.ndarray, measurement: Any, scale: float) -> None:
    """Draw a CtrMeasurement onto an RGB uint8 image in place.

    Args:
        out: uint8 H x W x 3 (RGB), the overlay being drawn.
        measurement: a `measurement.ctr.CtrMeasurement` (masks at the model's grid; lines in
            fractions of the image, so any display size works).
        scale: the image's mark size factor (`drawing.mark_scale`).
    """
    thick, halo = strokes(scale)
    # the thorax first: where the heart's border meets the thorax's, the heart stays on top
    _draw_outline(out, measurement.thorax, THORAX_COLOUR, thick, halo)
    _draw_outline(out, measurement.heart, HEART_COLOUR, thick, halo)
    tick = max(2, int(round(10 * scale)))
    for line, colour in ((measurement.thoracic_line, THORAX_COLOUR), (measurement.cardiac_line, HEART_COLOUR)):
        _draw_width_line(out, line, colour, thick, halo, tick)
    thorax_x, thorax_y = _line_ends(out, measurement.thoracic_line)[0]
    heart_x, heart_y = _line_ends(out, measurement.cardiac_line)[0]
    # the thoracic label above its line, the cardiac one below its own: apart however close the rows
    draw_label(out, f"thoracic {measurement.thoracic_width_px:.0f} px", (thorax_x, thorax_y - tick - halo), scale,
               above=True)
    draw_label(out, f"cardiac {measurement.cardiac_width_px:.0f} px", (heart_x, heart_y + tick + halo), scale,
               above=False)
    corner = max(2, int(round(6 * scale)))
    draw_label(out, f"CTR {measurement.ctr:.2f}", (corner, corner), scale, above=False)


def _draw_outline(out: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thick: int, halo: int) -> None:
    """The outline of a soft mask (any grid) resized to the image and cut at one half, dark under light."""
    height, width = out.shape[:2]
    full = cv2.resize(np.asarray(mask, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    contours, _ = cv2.findContours((full >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return
    if halo > thick:
        cv2.polylines(out, contours, True, BLACK, halo, line_type(halo))
    cv2.polylines(out, contours, True, colour, thick, line_type(thick))


def _line_ends(out: np.ndarray, line: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """A WidthLine's two ends in image pixels: the row's centre, the extreme columns' centres."""
    height, width = out.shape[:2]
    y = int(np.clip(round(float(line.row) * height - 0.5), 0, height - 1))
    x0 = int(np.clip(round(float(line.left) * width), 0, width - 1))
    x1 = int(np.clip(round(float(line.right) * width) - 1, x0, width - 1))
    return (x0, y), (x1, y)


def _draw_width_line(out: np.ndarray, line: Any, colour: tuple[int, int, int], thick: int, halo: int,
                     tick: int) -> None:
    """A diameter with a tick at each end (an |----| callipers mark), dark under light."""
    (x0, y), (x1, _) = _line_ends(out, line)
    segments = [((x0, y), (x1, y)), ((x0, y - tick), (x0, y + tick)), ((x1, y - tick), (x1, y + tick))]
    for stroke, width in ((BLACK, halo), (colour, thick)):
        if stroke is BLACK and halo <= thick:
            continue  # a small image: no dark outline (it would cover the line's neighbourhood)
        for a, b in segments:
            cv2.line(out, a, b, stroke, width, line_type(width))
