"""The PDF report's building blocks: styles, tables, banners, embedded images, text formats.

`xray_ai.outputs.report` says what a report holds; this module says how each piece looks
(reportlab platypus flowables) and how a value is written (percentages, the metrics
summary, markup escaping), so that the report module reads as its sections.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

import cv2
import numpy as np
from PIL import Image as PILImage
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Image, KeepTogether, Paragraph, Spacer, Table, TableStyle

__all__ = [
    "MAX_EMBED_SIDE",
    "report_styles",
    "escape_markup",
    "percent",
    "key_value_table",
    "grid_table",
    "banner",
    "present_fields",
    "format_metrics",
    "downscale",
    "embed_image",
]

MAX_EMBED_SIDE = 1024  # images are downscaled to this long side before embedding


def report_styles() -> dict[str, ParagraphStyle]:
    """The paragraph styles of the report, by name (Title, Heading2, Body, Cell, Key, ...)."""
    base = getSampleStyleSheet()
    body = ParagraphStyle("Body", parent=base["BodyText"], fontSize=9.5, leading=12.5)
    return {
        "Title": ParagraphStyle("ReportTitle", parent=base["Title"], fontSize=18, spaceAfter=4),
        "Heading2": ParagraphStyle("H2", parent=base["Heading2"], fontSize=12.5, spaceBefore=8,
                                   spaceAfter=3, keepWithNext=1),
        "Heading3": ParagraphStyle("H3", parent=base["Heading3"], fontSize=10.5, spaceBefore=6,
                                   spaceAfter=2),
        "Body": body,
        "Cell": ParagraphStyle("Cell", parent=body, fontSize=9, leading=11.5),
        "Key": ParagraphStyle("Key", parent=body, fontSize=9, leading=11.5,
                              fontName="Helvetica-Bold"),
        "Bullet": ParagraphStyle("Bullet", parent=body, leftIndent=10, bulletIndent=2),
        "Caption": ParagraphStyle("Caption", parent=body, fontSize=8.5, alignment=TA_CENTER,
                                  textColor=colors.Color(0.3, 0.3, 0.3)),
        "Banner": ParagraphStyle("Banner", parent=body, fontSize=10.5, leading=14,
                                 textColor=colors.white),
    }


def escape_markup(value: Any) -> str:
    """Plain text -> reportlab Paragraph markup (escapes <, >, &; keeps line breaks)."""
    return escape(str(value)).replace("\r\n", "\n").replace("\n", "<br/>")


def percent(value: float) -> str:
    """0.4237 -> "42.4 %"."""
    return f"{100.0 * float(value):.1f} %"


def key_value_table(rows: Sequence[tuple[str, Any]], styles: Mapping) -> Table:
    """Two columns, bold key and value: the report's fact tables."""
    data = [[Paragraph(escape_markup(k), styles["Key"]), Paragraph(escape_markup(v), styles["Cell"])]
            for k, v in rows]
    table = Table(data, colWidths=[42 * mm, None], hAlign="LEFT")
    table.setStyle(TableStyle([
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.Color(0.85, 0.85, 0.85)),
        ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]))
    return table


def grid_table(rows: Sequence[Sequence[Any]], styles: Mapping, widths: Sequence[Any]) -> Table:
    """A ruled table whose first row is the header (repeated on a page break)."""
    data = [[Paragraph(escape_markup(c), styles["Key" if r == 0 else "Cell"]) for c in row]
            for r, row in enumerate(rows)]
    table = Table(data, colWidths=list(widths), hAlign="LEFT", repeatRows=1)
    table.setStyle(TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.4, colors.Color(0.7, 0.7, 0.7)),
        ("BACKGROUND", (0, 0), (-1, 0), colors.Color(0.92, 0.92, 0.92)),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]))
    return table


def banner(markup: str, styles: Mapping, colour: colors.Color) -> KeepTogether:
    """White text on a full-width coloured box: the placeholder and synthetic-data alerts.

    `markup` is reportlab Paragraph markup, not escaped here.
    """
    table = Table([[Paragraph(markup, styles["Banner"])]], colWidths=[None])
    table.setStyle(TableStyle([
        ("BACKGROUND", (0, 0), (-1, -1), colour),
        ("LEFTPADDING", (0, 0), (-1, -1), 8), ("RIGHTPADDING", (0, 0), (-1, -1), 8),
        ("TOPPADDING", (0, 0), (-1, -1), 6), ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
    ]))
    return KeepTogether([table, Spacer(1, 3 * mm)])


def present_fields(values: Any, fields: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """(label, value) for each of `fields` (key, label) that `values` holds and is not empty."""
    if not isinstance(values, Mapping):
        return []
    return [(label, str(values[key])) for key, label in fields
            if values.get(key) not in (None, "")]


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """The registry's held-out figures in one paragraph: the headline numbers with their CIs.

    Not the whole `metrics` dict: per-body-part tables, ROC and calibration data and the
    training record would not fit one table cell (and reportlab cannot split a cell across
    pages); they are in the registry entry and `models/<id>.metrics.json`.
    """
    ci = metrics.get("ci95", {}) if isinstance(metrics.get("ci95"), Mapping) else {}

    def figure(key: str, label: str, source: Mapping[str, Any] = metrics) -> str | None:
        value = source.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        bounds = ci.get(key) if source is metrics else None
        interval = f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if isinstance(bounds, (list, tuple)) and len(bounds) == 2 else ""
        return f"{label} {value:.3f}{interval}"

    split = metrics.get("split")
    head = f"{split} split" + (f", n = {metrics['n']}" if isinstance(metrics.get("n"), int) else "") if split else ""
    study = metrics.get("study_level") if isinstance(metrics.get("study_level"), Mapping) else {}
    where = metrics.get("localisation") if isinstance(metrics.get("localisation"), Mapping) else {}
    part = metrics.get("body_part") if isinstance(metrics.get("body_part"), Mapping) else {}
    parts = [head, figure("auc", "AUC"), figure("sensitivity", "sensitivity"), figure("specificity", "specificity"),
             figure("kappa", "Cohen's kappa"), figure("ece", "ECE"),
             # shown where studies have several views (else it repeats the image-level AUC)
             figure("auc", "study-level AUC", study) if 0 < study.get("n", 0) < metrics.get("n", 0) else None,
             figure("pointing_game", "Grad-CAM pointing game", where),
             figure("accuracy", "body-part accuracy", part)]
    said = "; ".join(p for p in parts if p)
    return (said + ". All figures: the registry entry's metrics.") if said else "see the registry entry's metrics"


def downscale(pixels: np.ndarray) -> np.ndarray:
    """Float H x W image with its long side at most MAX_EMBED_SIDE (area interpolation)."""
    height, width = pixels.shape
    factor = MAX_EMBED_SIDE / max(height, width)
    if factor >= 1.0:
        return pixels
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def embed_image(array: np.ndarray, width: float, height: float) -> Image:
    """uint8 H x W (gray) or H x W x 3 (RGB) -> a platypus Image of the given size in points."""
    buffer = io.BytesIO()
    # PNG keeps the radiograph lossless; level 1 because reportlab recompresses the pixels.
    PILImage.fromarray(array).save(buffer, format="PNG", compress_level=1)
    buffer.seek(0)
    return Image(buffer, width=width, height=height)
