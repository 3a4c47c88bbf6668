"""PDF report of one analysis (reportlab platypus): result, images, provenance, review.

The report says which model produced the result, how its threshold was chosen, and that a
clinician decides. A study with no view in the model's scope says "Not assessable" in a grey
banner and in its result table, with the reasons, and gives no decision; its model output is
kept, marked unreliable. The overlays carry the automatic marks the result's finding levels
call for (`overlay.finding_legend`, printed under the images). A measurement model's report
(cardiomegaly's cardiothoracic ratio) puts the ratio, the rule and the two widths first, the
calibrated probability after them, and its overlays show the outlines and diameters
(`xray_ai.outputs.view_overlay`, as every output draws a view). A placeholder model's report
carries PLACEHOLDER_WATERMARK diagonally on every page. Patient and study identifiers appear only when asked for. Apart from the report
id and the date, the same inputs give the same bytes (reportlab's invariant mode).
How each piece looks (styles, tables, embedded images) is `xray_ai.outputs.report_layout`.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.platypus import BaseDocTemplate, Frame, KeepTogether, PageTemplate, Paragraph, Spacer, Table, TableStyle

from xray_ai.outputs.overlay import Marker, display_pixels, finding_legend, to_rgb8
from xray_ai.outputs.measurement_display import ctr_headline, view_ctr_text, widths_text
from xray_ai.outputs.report_layout import (
    MAX_EMBED_SIDE,
    banner,
    downscale,
    embed_image,
    escape_markup,
    format_metrics,
    grid_table,
    key_value_table,
    percent,
    present_fields,
    report_styles,
)
from xray_ai.outputs.view_overlay import view_overlay
from xray_ai.result import DISCLAIMER, PLACEHOLDER_WATERMARK, AnalysisResult, ViewResult

__all__ = ["build_report", "REPORT_TITLE", "MAX_EMBED_SIDE"]

REPORT_TITLE = "X-ray decision-support report"
AGREEMENTS = {
    "agree": "The reviewing clinician agrees with the model's decision.",
    "disagree": "The reviewing clinician disagrees with the model's decision.",
}
_AGREEMENTS_NOT_ASSESSABLE = {
    "agree": "The reviewing clinician agrees that the study is not assessable by this model.",
    "disagree": "The reviewing clinician disagrees that the study is not assessable by this model.",
}
NOT_ASSESSABLE_TITLE = "Not assessable"
_PATIENT_FIELDS = (("name", "Patient name"), ("id", "Patient ID"),
                   ("birth_date", "Birth date"), ("sex", "Sex"))
_STUDY_FIELDS = (("date", "Study date"), ("description", "Study description"),
                 ("accession_number", "Accession number"), ("study_uid", "Study UID"),
                 ("institution", "Institution"))
_RED = colors.Color(0.8, 0.0, 0.0)
_GREY = colors.Color(0.38, 0.38, 0.4)
_MARGIN = 18 * mm


def build_report(
    result: AnalysisResult,
    *,
    include_patient: bool = False,
    notes: str | None = None,
    agreement: str | None = None,
    markers: Sequence[Marker] = (),
    intensity: float = 0.5,
    clinician: str | None = None,
    report_id: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """Build the PDF report of one analysis.

    Args:
        result: the analysis to report (one or several views of one study).
        include_patient: include the patient and study fields of the first view's metadata;
            by default they are left out and the report says so.
        notes: the clinician's free-text notes (plain text; markup characters are escaped).
        agreement: "agree", "disagree" or None (not stated).
        markers: the clinician's manual markers; each is drawn on the view it names.
        intensity: heatmap intensity 0..1 for the overlay images, as in render_overlay.
        clinician: name of the reviewing clinician, shown when given.
        report_id: identifier printed on every page; default: 12 hex digits of a uuid4.
        now: time of the report (naive means UTC); default: the current time.

    Returns:
        The PDF document as bytes (starts with b"%PDF").

    Raises:
        ValueError: agreement is not "agree", "disagree" or None; intensity outside [0, 1];
            the result has no views.
    """
    if agreement is not None and agreement not in AGREEMENTS:
        raise ValueError(f"agreement must be 'agree', 'disagree' or None, got {agreement!r}")
    if not 0.0 <= float(intensity) <= 1.0:
        raise ValueError(f"intensity must be in [0, 1], got {intensity!r}")
    if not result.views:
        raise ValueError("the result has no views to report")
    report_id = report_id or uuid.uuid4().hex[:12]
    now = now or datetime.now(timezone.utc)
    now = now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)
    styles = report_styles()

    story: list[Any] = [Paragraph(REPORT_TITLE, styles["Title"])]
    if result.placeholder:
        reason = result.placeholder_reason or "reason not recorded"
        story.append(banner(
            f"<b>{PLACEHOLDER_WATERMARK}</b><br/>The active model could not be loaded and an "
            f"untrained placeholder produced this output: the probability, decision and heatmap "
            f"carry no meaning. Reason: {escape_markup(reason)}", styles, _RED))
    if not result.assessable:
        reasons = "".join(f"<br/>• {escape_markup(r)}" for r in result.scope_reasons)
        story.append(banner(
            f"<b>{NOT_ASSESSABLE_TITLE}</b>: no view of this study is in the model's scope, so no decision "
            f"is given. The model's output below is kept for the record only and is unreliable for "
            f"these images.{reasons}", styles, _GREY))
    if result.synthetic:
        story.append(banner(
            "<b>Model trained on synthetic data — no clinical meaning.</b> This demonstration "
            "model learned from generated phantoms, not from patient radiographs.",
            styles, colors.Color(0.75, 0.4, 0.0)))
    header = [("Report ID", report_id), ("Report date", now.strftime("%Y-%m-%d %H:%M:%S UTC"))]
    if result.created:
        header.append(("Analysis time", result.created))
    if clinician:
        header.append(("Clinician", clinician))
    story += [key_value_table(header, styles), Spacer(1, 3 * mm)]

    story += _patient_section(result, include_patient, styles)
    story += _result_section(result, styles)
    story += _warning_section(result, styles)
    story += _image_section(result, markers, float(intensity), styles)
    story += _review_section(result, notes, agreement, markers, clinician, styles)
    story += _model_section(result, styles)
    story += [Spacer(1, 4 * mm), Paragraph("Disclaimer", styles["Heading2"]),
              Paragraph(escape_markup(DISCLAIMER), styles["Body"])]

    buffer = io.BytesIO()
    doc = BaseDocTemplate(
        buffer, pagesize=A4, leftMargin=_MARGIN, rightMargin=_MARGIN, topMargin=_MARGIN,
        bottomMargin=_MARGIN, title=REPORT_TITLE, author="xray_ai",
        subject=f"{result.condition_name} - model {result.model_id} {result.model_version}",
        invariant=1,  # no creation date or random document id: same input, same bytes
    )
    frame = Frame(doc.leftMargin, doc.bottomMargin, doc.width, doc.height, id="body")
    decorate = _page_decorator(report_id, result.placeholder)
    doc.addPageTemplates([PageTemplate(id="page", frames=[frame], onPageEnd=decorate)])
    doc.build(story)
    return buffer.getvalue()


# --- sections ----------------------------------------------------------------------------


def _patient_section(result: AnalysisResult, include: bool, styles: Mapping) -> list[Any]:
    flow: list[Any] = [Paragraph("Patient and study", styles["Heading2"])]
    if not include:
        flow.append(Paragraph("Patient and study identifiers were omitted from this report.",
                              styles["Body"]))
        return flow
    metadata = result.views[0].image.metadata
    rows = present_fields(metadata.get("patient"), _PATIENT_FIELDS)
    rows += present_fields(metadata.get("study"), _STUDY_FIELDS)
    if rows:
        flow.append(key_value_table(rows, styles))
    else:
        flow.append(Paragraph("The image carries no patient or study identifiers.",
                              styles["Body"]))
    return flow


def _result_section(result: AnalysisResult, styles: Mapping) -> list[Any]:
    if result.assessable and result.kind == "measurement":  # the ratio first; the probability is its calibration
        said = [("Measurement", ctr_headline(result)), ("Decision", result.decision),
                ("Widths", f"{widths_text(result) or 'not measured'} (widest diameters, in the image's pixels)"),
                ("Calibrated probability", f"{percent(result.probability)} ({result.positive_label}), "
                                           "a logistic calibration of the ratio")]
    elif result.assessable:
        said = [("Probability", f"{percent(result.probability)} ({result.positive_label})"),
                ("Decision", result.decision)]
    else:  # no decision text: the output is there for the record, marked unreliable
        said = [("Result", NOT_ASSESSABLE_TITLE),
                ("Why", "\n".join(result.scope_reasons)),
                ("Model output", f"{percent(result.probability)}, unreliable for these images")]
        if result.kind == "measurement":
            said.append(("Measurement", ctr_headline(result)))
    rows = [
        ("Condition", result.condition_name),
        *said,
        ("Threshold", f"{result.threshold:.3f} ({percent(result.threshold)})"),
        ("Threshold chosen by", result.threshold_method),
        ("Model", f"{result.model_id} version {result.model_version} ({result.architecture})"),
        ("Heatmap", f"{result.heatmap_method}; target layer {result.target_layer or 'none'}; "
                    f"backend {result.backend}"),
        ("Input check", result.input_check_summary),
    ]
    if result.body_part_summary:
        rows.append(("Body part", result.body_part_summary))
    left_out = [v for v in result.views if not v.assessable]
    if len(result.views) > 1 and result.assessable:
        counted = len(result.views) - len(left_out)
        rows.insert(2, ("Study score", f"mean of {len(result.views)} views" if not left_out
                        else f"mean of the {counted} assessable views of {len(result.views)}"))
        if left_out:
            rows.insert(4, ("Views not counted", "\n".join(r for v in left_out for r in v.scope_reasons)))
    flow: list[Any] = [Paragraph("Result", styles["Heading2"]), key_value_table(rows, styles)]
    if len(result.views) > 1:
        figure = "CTR (probability)" if result.kind == "measurement" else "Probability"
        head = ["View", "File", figure if result.assessable else "Model output (unreliable)",
                "In scope", "Heatmap note"]
        body = [[str(i), v.image.name or "(unnamed)", _view_figure(result, v),
                 "yes" if v.assessable else "no: not counted", v.heatmap_flag or ""]
                for i, v in enumerate(result.views, start=1)]
        flow += [Spacer(1, 2 * mm),
                 grid_table([head, *body], styles, (12 * mm, None, 28 * mm, 26 * mm, 34 * mm))]
    return flow


def _model_section(result: AnalysisResult, styles: Mapping) -> list[Any]:
    rows = [
        ("Model ID", result.model_id),
        ("Version", result.model_version),
        ("Architecture", result.architecture),
        ("Profile", result.profile),
        ("SHA-256 (prefix)", (result.sha256 or "not recorded")[:12]),
        ("Trained on", result.trained_on),
        ("Intended use", result.intended_use),
    ]
    if result.members:  # an ensemble: which models it averaged, and what each said
        rows.insert(1, ("Ensemble of", ", ".join(result.members)))
        if all(len(v.member_probabilities) == len(result.members) for v in result.views):
            means = [sum(v.member_probabilities[i] for v in result.views) / len(result.views)
                     for i in range(len(result.members))]
            said = "; ".join(f"{m}: {percent(p)}" for m, p in zip(result.members, means))
            rows.insert(2, ("Member probabilities", f"{said} (the result is their mean)"))
    if result.metrics:
        rows.append(("Held-out metrics", format_metrics(result.metrics)))
    return [Paragraph("Model", styles["Heading2"]), key_value_table(rows, styles)]


def _warning_section(result: AnalysisResult, styles: Mapping) -> list[Any]:
    # The pipeline's one list: it already names each view's image warnings and heatmap flags.
    unique = list(dict.fromkeys(result.warnings))
    if not unique:
        return []
    return [Paragraph("Warnings", styles["Heading2"])] + [
        Paragraph(escape_markup(w), styles["Bullet"], bulletText="•") for w in unique
    ]


def _review_section(
    result: AnalysisResult,
    notes: str | None,
    agreement: str | None,
    markers: Sequence[Marker],
    clinician: str | None,
    styles: Mapping,
) -> list[Any]:
    if not (notes or agreement or markers or clinician):
        return []
    flow: list[Any] = [Paragraph("Clinician review", styles["Heading2"])]
    if clinician:
        flow.append(Paragraph(f"Reviewed by: {escape_markup(clinician)}", styles["Body"]))
    if agreement:
        said = AGREEMENTS if result.assessable else _AGREEMENTS_NOT_ASSESSABLE
        flow.append(Paragraph(said[agreement], styles["Body"]))
    if notes:
        flow += [Paragraph("<b>Notes</b>", styles["Body"]), Paragraph(escape_markup(notes), styles["Body"])]
    if markers:
        flow.append(Paragraph("<b>Markers</b>", styles["Body"]))
        for number, marker in enumerate(markers, start=1):
            view = _view_name(result, marker.view)
            label = marker.label or "(no label)"
            text = f"{number}. {label} — x {marker.x:.0%}, y {marker.y:.0%} of {view}"
            flow.append(Paragraph(escape_markup(text), styles["Bullet"]))
    return flow


def _image_section(
    result: AnalysisResult, markers: Sequence[Marker], intensity: float, styles: Mapping
) -> list[Any]:
    flow: list[Any] = [Paragraph("Images", styles["Heading2"])]
    half = (A4[0] - 2 * _MARGIN - 6 * mm) / 2
    for index, view in enumerate(result.views):
        # a small image drawn larger, as the page shows it: its marks' labels stay legible
        pixels = display_pixels(downscale(np.asarray(view.image.pixels, dtype=np.float32)))
        overlay = view_overlay(result, view, pixels, intensity, markers=[m for m in markers if m.view == index])
        height, width = pixels.shape
        draw_w = half
        draw_h = draw_w * height / width
        if draw_h > 110 * mm:  # keep tall images on one page with their caption
            draw_w, draw_h = draw_w * 110 * mm / draw_h, 110 * mm
        images = [embed_image(to_rgb8(pixels)[:, :, 0], draw_w, draw_h),
                  embed_image(overlay, draw_w, draw_h)]
        drawn = ("Outlines and diameters, heart mask" if result.kind == "measurement" else "Heatmap overlay")
        captions = [Paragraph("Original", styles["Caption"]),
                    Paragraph(f"{drawn} (intensity {intensity:.2f})", styles["Caption"])]
        grid = Table([images, captions], colWidths=[half + 3 * mm] * 2)
        grid.setStyle(TableStyle([("ALIGN", (0, 0), (-1, -1), "CENTER"),
                                  ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        title = f"View {index + 1}: {view.image.name or '(unnamed)'} — {_view_output(result, view)}"
        flow.append(KeepTogether([Paragraph(escape_markup(title), styles["Heading3"]), grid]))
    legend = finding_legend(result) if result.assessable else (
        f"No automatic marks: the study is {NOT_ASSESSABLE_TITLE.lower()}.",)
    flow += [Paragraph(escape_markup(line), styles["Caption"]) for line in legend]
    return flow


def _view_figure(result: AnalysisResult, view: ViewResult) -> str:
    """A view's figure: its probability, and for a measurement model its ratio before it."""
    if result.kind == "measurement":
        ctr = "not measured" if view.measurement is None else f"{view.measurement.ctr:.2f}"
        return f"CTR {ctr} ({percent(view.probability)})"
    return percent(view.probability)


def _view_output(result: AnalysisResult, view: ViewResult) -> str:
    if result.kind == "measurement":
        said = f"{view_ctr_text(view)}; calibrated probability {percent(view.probability)}"
    else:
        said = f"probability {percent(view.probability)}"
    if not result.assessable:
        return f"model output: {said} (unreliable, not assessable)"
    if not view.assessable:
        return f"{said} (out of scope, not counted)"
    level = None if result.kind == "measurement" else result.finding_level(view)  # its mark: the outlines
    return said + (f"; {level}" if level else "")


# --- page decoration ---------------------------------------------------------------------


def _page_decorator(report_id: str, placeholder: bool):
    """onPageEnd callback: footer on every page, and the watermark over the content."""

    def decorate(canvas, doc) -> None:
        width, height = doc.pagesize
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.setFillColor(colors.grey)
        canvas.drawString(_MARGIN, 10 * mm, f"{REPORT_TITLE} {report_id} - page {doc.page}")
        canvas.drawRightString(width - _MARGIN, 10 * mm,
                               "Decision support only, not a diagnosis. A clinician decides.")
        if placeholder:
            # Drawn after the page's content so that no image or table can hide it.
            canvas.setFillColor(_RED, alpha=0.35)
            diagonal = (width**2 + height**2) ** 0.5
            size = 0.72 * diagonal / stringWidth(PLACEHOLDER_WATERMARK, "Helvetica-Bold", 1.0)
            canvas.setFont("Helvetica-Bold", size)
            canvas.translate(width / 2, height / 2)
            canvas.rotate(np.degrees(np.arctan2(height, width)))
            canvas.drawCentredString(0, -size / 3, PLACEHOLDER_WATERMARK)
        canvas.restoreState()

    return decorate


# --- helpers -----------------------------------------------------------------------------


def _view_name(result: AnalysisResult, index: int) -> str:
    """'view N (FILE NAME)': the file's name only (XRay.name: folders often hold patient names)."""
    if 0 <= index < len(result.views):
        return f"view {index + 1} ({result.views[index].image.name or 'unnamed'})"
    return f"view {index + 1} (not in this study)"
