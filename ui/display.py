"""Screen-sized copies of the views: what the browser is sent on every redraw.

A 2000 x 2000 DICOM drawn at full resolution made each move of the intensity slider encode
and send a 14 MB PNG. The page shows at most a column's width (times the screen's pixel
ratio), so each view is reduced once per result to at most `SCREEN_MAX_SIDE` pixels on its
longer side (area averaging, which keeps thin bright lines such as a fracture's edge) and
kept in the session; the overlay is drawn on that copy and sent as a high-quality JPEG.
The full-resolution image is used for the PDF report and the DICOM outputs only.
"""

from __future__ import annotations

import cv2
import numpy as np
import streamlit as st

from xray_ai.outputs.overlay import display_pixels
from xray_ai.result import AnalysisResult

__all__ = ["SCREEN_MAX_SIDE", "JPEG_QUALITY", "screen_pixels", "screen_views"]

SCREEN_MAX_SIDE = 1024  # a wide column (about 700 CSS px) at a pixel ratio of 1.5
JPEG_QUALITY = 90  # no visible blocking on a radiograph or a heatmap at this size; a tenth of a PNG's bytes
_KEY = "analyse.screen_views"


def screen_pixels(image: np.ndarray, max_side: int = SCREEN_MAX_SIDE) -> np.ndarray:
    """`image` (float H x W in [0, 1]) at most `max_side` on its longer side (area averaging);
    a small image is enlarged as `overlay.display_pixels` does, so its labels stay legible."""
    height, width = image.shape
    factor = max_side / max(height, width)
    if factor >= 1.0:
        return display_pixels(image)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)


def screen_views(result: AnalysisResult) -> list[np.ndarray]:
    """The screen-sized copy of each view of `result`, computed once per result and session."""
    cached = st.session_state.get(_KEY)
    if cached is None or cached[0] is not result:
        cached = (result, [screen_pixels(view.image.pixels) for view in result.views])
        st.session_state[_KEY] = cached
    return cached[1]
