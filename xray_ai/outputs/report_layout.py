"""The PDF report's building blocks: styles, tables, banners, embedded images, text formats.

`xray_ai.outputs.report` says what a report holds; this module says how each piece looks
(reportlab platypus flowables) and how a value is written (percentages, the metrics
summary, markup escaping), so that the report module reads as its sections.

Fonts: the text is set in DejaVu Sans, a Unicode TrueType font (Latin, Greek, Cyrillic,
Arabic, Hebrew, Armenian, Georgian... about 5,900 characters), embedded as a subset. It is
found in Debian's fonts-dejavu-core (`/usr/share/fonts/truetype/dejavu`, installed by
`.ci/install-browser.sh`) or in matplotlib's own copy (a dependency of lime, so every
`pip install -r requirements.txt` has it). Characters DejaVu lacks (Chinese, Japanese,
Korean) are set in a CJK fallback when one is installed (Debian's fonts-wqy-zenhei, also
installed by `.ci/install-browser.sh`; or fonts-droid-fallback, which lacks Hangul); a character no font has
becomes U+FFFD, never an empty box. Without any TrueType font the report falls back to
Helvetica (Latin only) and says nothing worse than before. Arabic and Hebrew letters are
drawn in their isolated forms, left to right (no shaping).

Long values never break the layout: a table cell holds at most `MAX_CELL_CHARS`
characters (cut with an ellipsis that says how long the value was), long words are split,
and banners are paragraphs, which split across pages.
"""

from __future__ import annotations

import functools
import importlib.util
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
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
    "MAX_CELL_CHARS",
    "FONT",
    "BOLD_FONT",
    "report_fonts",
    "unsupported_characters",
    "cut",
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
MAX_CELL_CHARS = 400  # a table cell cannot split across pages: longer values are cut
FONT, BOLD_FONT, CJK_FONT = "XrayAI-Sans", "XrayAI-Sans-Bold", "XrayAI-CJK"

_DEJAVU_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"),
                Path("/usr/local/share/fonts/dejavu"))
_CJK_FILES = (Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),  # Chinese, Japanese kana, Korean Hangul
              Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"))  # no Hangul


def _dejavu_files() -> tuple[Path, Path] | None:
    """(regular, bold) DejaVu Sans: Debian's, else matplotlib's bundled copy (found without
    importing matplotlib)."""
    dirs = list(_DEJAVU_DIRS)
    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.origin:
        dirs.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf")
    for folder in dirs:
        regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            return regular, bold
    return None


@functools.lru_cache(maxsize=1)
def report_fonts() -> dict[str, Any]:
    """Register the report's fonts once; {'regular', 'bold', 'cjk', 'files'}: the names to use
    (Helvetica when no TrueType font is found), the CJK fallback's name or None, and the
    files used."""
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    found = _dejavu_files()
    fonts: dict[str, Any] = {"regular": "Helvetica", "bold": "Helvetica-Bold", "cjk": None, "files": [],
                             "charsets": []}
    if found is not None:
        try:
            regular, bold = TTFont(FONT, str(found[0])), TTFont(BOLD_FONT, str(found[1]))
            pdfmetrics.registerFont(regular)
            pdfmetrics.registerFont(bold)
            for name, is_bold in ((FONT, 0), (BOLD_FONT, 1)):
                addMapping(FONT, is_bold, 0, name)
                addMapping(FONT, is_bold, 1, name)
            fonts.update(regular=FONT, bold=BOLD_FONT, files=[str(found[0]), str(found[1])],
                         charsets=[set(regular.face.charToGlyph)])
        except Exception:  # a damaged font file: the built-in font still makes a report
            pass
    for path in _CJK_FILES:
        if fonts["regular"] == FONT and path.is_file():
            try:
                cjk = TTFont(CJK_FONT, str(path), subfontIndex=0) if path.suffix == ".ttc" else TTFont(CJK_FONT, str(path))
                pdfmetrics.registerFont(cjk)
                for is_bold in (0, 1):
                    for italic in (0, 1):
                        addMapping(CJK_FONT, is_bold, italic, CJK_FONT)
                fonts.update(cjk=CJK_FONT, cjk_chars=set(cjk.face.charToGlyph))
                fonts["files"].append(str(path))
                break
            except Exception:
                continue
    return fonts


def _coverage(ch: str) -> str | None:
    """'main', 'cjk' or None: which of the report's fonts can draw `ch`."""
    fonts = report_fonts()
    code = ord(ch)
    if fonts["regular"] != FONT:
        return "main" if code < 256 else None
    if code in fonts["charsets"][0] or ch in "\n\r\t":
        return "main"
    if fonts["cjk"] and code in fonts["cjk_chars"]:
        return "cjk"
    return None


def unsupported_characters(text: str) -> list[str]:
    """The characters of `text` that none of the report's fonts can draw (shown as U+FFFD)."""
    return sorted({ch for ch in str(text) if _coverage(ch) is None})


def cut(value: Any, limit: int = MAX_CELL_CHARS) -> str:
    """`value` as text, at most `limit` characters: a longer one ends with an ellipsis and
    says how long it was, so that a table cell always fits on a page."""
    text = str(value)
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 40)].rstrip() + f"… (cut: {len(text):,} characters)"


def report_styles() -> dict[str, ParagraphStyle]:
    """The paragraph styles of the report, by name (Title, Heading2, Body, Cell, Key, ...),
    in the report's Unicode font (`report_fonts`); long words are split."""
    fonts = report_fonts()
    regular, bold = fonts["regular"], fonts["bold"]
    base = getSampleStyleSheet()
    body = ParagraphStyle("Body", parent=base["BodyText"], fontSize=9.5, leading=12.5, fontName=regular,
                          splitLongWords=1)
    return {
        "Title": ParagraphStyle("ReportTitle", parent=base["Title"], fontSize=18, spaceAfter=4, fontName=bold),
        "Heading2": ParagraphStyle("H2", parent=base["Heading2"], fontSize=12.5, spaceBefore=8,
                                   spaceAfter=3, keepWithNext=1, fontName=bold),
        "Heading3": ParagraphStyle("H3", parent=base["Heading3"], fontSize=10.5, spaceBefore=6,
                                   spaceAfter=2, fontName=bold, splitLongWords=1),
        "Body": body,
        "Cell": ParagraphStyle("Cell", parent=body, fontSize=9, leading=11.5),
        "Key": ParagraphStyle("Key", parent=body, fontSize=9, leading=11.5,
                              fontName=bold),
        "Bullet": ParagraphStyle("Bullet", parent=body, leftIndent=10, bulletIndent=2),
        "Caption": ParagraphStyle("Caption", parent=body, fontSize=8.5, alignment=TA_CENTER,
                                  textColor=colors.Color(0.3, 0.3, 0.3)),
        "Banner": ParagraphStyle("Banner", parent=body, fontSize=10.5, leading=14,
                                 textColor=colors.white),
    }


def escape_markup(value: Any) -> str:
    """Plain text -> reportlab Paragraph markup (escapes <, >, &; keeps line breaks); runs
    of characters the main font lacks are set in the CJK fallback, and a character no font
    has becomes U+FFFD (see the module docstring)."""
    text = str(value).replace("\r\n", "\n")
    out: list[str] = []
    run: list[str] = []
    for ch in text:
        where = _coverage(ch)
        if where == "cjk":
            run.append(ch)
            continue
        if run:
            out.append(f'<font name="{CJK_FONT}">{escape("".join(run))}</font>')
            run = []
        out.append(escape(ch) if where == "main" else "\ufffd" if report_fonts()["regular"] == FONT else "?")
    if run:
        out.append(f'<font name="{CJK_FONT}">{escape("".join(run))}</font>')
    return "".join(out).replace("\n", "<br/>")


def percent(value: float) -> str:
    """0.4237 -> "42.4 %"."""
    return f"{100.0 * float(value):.1f} %"


def key_value_table(rows: Sequence[tuple[str, Any]], styles: Mapping) -> Table:
    """Two columns, bold key and value: the report's fact tables."""
    data = [[Paragraph(escape_markup(cut(k)), styles["Key"]), Paragraph(escape_markup(cut(v)), styles["Cell"])]
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
    data = [[Paragraph(escape_markup(cut(c)), styles["Key" if r == 0 else "Cell"]) for c in row]
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

    `markup` is reportlab Paragraph markup, not escaped here. A paragraph with a background
    (not a one-cell table), so that however long the text (a placeholder reason, scope
    reasons) it splits across pages instead of raising LayoutError.
    """
    style = ParagraphStyle(f"Banner-{colour}", parent=styles["Banner"], backColor=colour, borderColor=colour,
                           borderWidth=0, borderPadding=(6, 8, 6, 8), spaceBefore=6, spaceAfter=6, splitLongWords=1)
    return KeepTogether([Paragraph(markup, style), Spacer(1, 3 * mm)])


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
