"""The overlay of one view of a result: what `render_overlay` is given, decided in one place.

The app, the PDF report, `predict --heatmap`, predict-batch's heatmaps and the DICOM
Secondary Capture all draw a result's view; each used to assemble render_overlay's arguments
itself. Here the result decides them:

- the colour layer: the view's heatmap (a measurement model's is the heart mask, tinted like
  any heatmap) unless the caller turns it off (`show_heatmap`);
- a classifier's view: the box its finding level calls for (`AnalysisResult.finding_level`),
  cut at the model's contour level; no probability in the label (the caption says it);
- a measurement model's view: its outlines and diameters instead of a box, under the same
  conditions as a box (an assessable view of an assessable study from a real model:
  nothing from a placeholder or an out-of-scope view may look like a reading);
- the placeholder watermark whenever the model is a placeholder.

What stays with the caller: the pixels to draw on (a screen-sized or display-sized copy, or
the image itself), the intensity, the switches the user set, and which markers belong to
the view (`Marker.view`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xray_ai.outputs.overlay import Marker, render_overlay
from xray_ai.result import AnalysisResult, ViewResult

__all__ = ["overlay_options", "view_overlay"]


def overlay_options(result: AnalysisResult, view: ViewResult, intensity: float = 0.5, *, show_heatmap: bool = True,
                    annotate: bool = True, markers: Sequence[Marker] = (), colormap: str = "jet") -> dict[str, Any]:
    """render_overlay's keyword arguments (all but the image) for `view` of `result`; see the
    module docstring for what each output gets. Arguments as for `view_overlay`."""
    measured = result.kind == "measurement"
    # AnalysisResult.finding_level's conditions for any automatic mark
    marks = not result.placeholder and result.assessable and view.assessable
    return {
        "heatmap": view.heatmap if show_heatmap else None,
        "intensity": intensity,
        "colormap": colormap,
        "annotate": annotate,
        # a box round the heart mask would say nothing: a measurement's outlines replace it
        "finding": None if measured else result.finding_level(view),
        "markers": tuple(markers),
        "placeholder": result.placeholder,
        "contour_level": result.contour_level,
        "measurement": view.measurement if measured and marks else None,
    }


def view_overlay(result: AnalysisResult, view: ViewResult, pixels: np.ndarray | None = None, intensity: float = 0.5,
                 *, show_heatmap: bool = True, annotate: bool = True, markers: Sequence[Marker] = (),
                 colormap: str = "jet") -> np.ndarray:
    """The overlay of one view of a result, as every output draws it.

    Args:
        result: the analysis the view belongs to (its finding levels, kind, placeholder flag).
        view: one of `result.views`.
        pixels: the image to draw on, float H x W in [0, 1] (a resized copy of the view's
            image: marks are placed in fractions of the image); None: the view's own image.
        intensity: the colour layer's strength, 0..1.
        show_heatmap: blend the view's heatmap (False: the plain radiograph under the marks).
        annotate: draw the automatic marks (the box, or a measurement's outlines and lines).
        markers: the clinician's markers to draw (all of them: pass only this view's).
        colormap: an OpenCV colormap name (overlay.COLORMAPS).

    Returns:
        uint8 H x W x 3 (RGB) at the resolution of `pixels`.
    """
    image = view.image.pixels if pixels is None else pixels
    return render_overlay(image, **overlay_options(result, view, intensity, show_heatmap=show_heatmap,
                                                   annotate=annotate, markers=markers, colormap=colormap))
