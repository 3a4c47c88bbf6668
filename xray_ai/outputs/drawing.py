"""Drawing primitives shared by the overlay's marks (`overlay`) and the measurement's
outlines (`measurement_display`): the size factor, stroke widths and labels.

Every mark is sized by one factor proportional to the image's shorter side, so a line or a
label covers the same share of a 64 px thumbnail, a 1024 px screen copy and a 3000 px film.
Colours are RGB (the overlay's arrays are RGB, not OpenCV's BGR).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["WHITE", "BLACK", "FONT", "MIN_TEXT_PX", "mark_scale", "thickness", "strokes", "line_type",
           "draw_label"]

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_TEXT_PX = 7  # a label whose letters would be shorter than this is left out


def mark_scale(height: int, width: int) -> float:
    """Size factor for lines and text, proportional to the shorter side: 1.0 at 512 px,
    0.125 at 64 px, 3.9 at 2000 px (no floor: a mark covers the same share of any image)."""
    return max(min(height, width), 1) / 512.0


def thickness(scale: float, base: float = 2.0) -> int:
    return max(1, int(round(base * scale)))


def strokes(scale: float) -> tuple[int, int]:
    """(light line, dark outline under it) widths in px: 2 and 4 at 512 px, 1 and 1 (no
    outline) on a small image, where a fixed outline would cover a large share of it."""
    line = thickness(scale)
    return line, line + 2 * int(round(scale))


def line_type(width: int) -> int:
    """Antialiased for lines wider than a pixel; plain for 1 px (antialiasing would triple it)."""
    return cv2.LINE_AA if width > 1 else cv2.LINE_8


def draw_label(out: np.ndarray, text: str, anchor: tuple[int, int], scale: float, *, above: bool) -> None:
    """Text on a dark plate at anchor (its lower-left when above, else its upper-left); left
    out when its letters would be too small to read at this image's size."""
    font_scale = 0.5 * scale
    thick = thickness(scale, 1.2)
    (tw, th), base = cv2.getTextSize(text, FONT, font_scale, thick)
    if th < MIN_TEXT_PX:
        return
    pad = max(2, int(round(3 * scale)))
    height, width = out.shape[:2]
    x = int(min(max(anchor[0], 0), max(width - tw - 2 * pad, 0)))
    y_top = anchor[1] - th - base - 2 * pad if above else anchor[1]
    if y_top < 0:  # no room above: put the label below the anchor instead
        y_top = anchor[1] if above else 0
    y_top = int(min(max(y_top, 0), max(height - th - base - 2 * pad, 0)))
    cv2.rectangle(out, (x, y_top), (x + tw + 2 * pad, y_top + th + base + 2 * pad), BLACK, -1)
    origin = (x + pad, y_top + pad + th)
    cv2.putText(out, text, origin, FONT, font_scale, WHITE, thick, cv2.LINE_AA)
