"""The placeholder watermark: red text with a white halo along the image's diagonal, sized
to the image (xray_ai.outputs.overlay draws it on every placeholder model's overlay)."""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["draw_watermark"]

_WHITE = (255, 255, 255)
_WATERMARK = (220, 0, 0)  # RGB
_FONT = cv2.FONT_HERSHEY_SIMPLEX



def draw_watermark(out: np.ndarray, text: str) -> None:
    """Red text with a white halo along the image diagonal, sized to the image."""
    height, width = out.shape[:2]
    diagonal = math.hypot(width, height)
    thick_ref = 2
    (ref_w, ref_h), _ = cv2.getTextSize(text, _FONT, 1.0, thick_ref)
    lines = [text]
    # Two lines when one line's letters would be small for the image (or tiny in pixels).
    letter_h = 0.85 * diagonal / ref_w * ref_h
    if letter_h < max(12.0, 0.03 * min(width, height)) and " - " in text:
        lines = text.split(" - ", 1)
    widest = max(cv2.getTextSize(line, _FONT, 1.0, thick_ref)[0][0] for line in lines)
    font_scale = 0.85 * diagonal / widest
    thick = max(1, int(round(font_scale * 2.2)))
    sizes = [cv2.getTextSize(line, _FONT, font_scale, thick) for line in lines]
    line_h = max(h + b for (_, h), b in sizes)
    gap = int(0.35 * line_h)
    halo = max(2, thick // 2 + 1)
    canvas_w = int(math.ceil(diagonal))
    canvas_h = len(lines) * line_h + (len(lines) - 1) * gap + 4 * halo
    text_strip = np.zeros((canvas_h, canvas_w), dtype=np.uint8)
    y = 2 * halo
    for line, ((line_w, line_top), _base) in zip(lines, sizes):
        origin = ((canvas_w - line_w) // 2, y + line_top)
        cv2.putText(text_strip, line, origin, _FONT, font_scale, 255, thick, cv2.LINE_AA)
        y += line_h + gap
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * halo + 1, 2 * halo + 1))
    halo_strip = cv2.dilate(text_strip, kernel)
    # Rotate the strip about its centre onto the image centre, rising left to right.
    angle = math.degrees(math.atan2(height, width))
    matrix = cv2.getRotationMatrix2D((canvas_w / 2.0, canvas_h / 2.0), angle, 1.0)
    matrix[0, 2] += width / 2.0 - canvas_w / 2.0
    matrix[1, 2] += height / 2.0 - canvas_h / 2.0
    text_mask = cv2.warpAffine(text_strip, matrix, (width, height), flags=cv2.INTER_LINEAR)
    halo_mask = cv2.warpAffine(halo_strip, matrix, (width, height), flags=cv2.INTER_LINEAR)
    # Blend only the pixels under the halo (a small part of the image).
    where = np.flatnonzero(halo_mask)
    pixels = out.reshape(-1, 3)
    blended = pixels[where].astype(np.float32)
    for mask, colour in ((halo_mask, _WHITE), (text_mask, _WATERMARK)):
        alpha = mask.reshape(-1)[where].astype(np.float32)[:, None] * (1.0 / 255.0)
        blended += alpha * (np.asarray(colour, dtype=np.float32) - blended)
    pixels[where] = np.rint(blended).astype(np.uint8)
