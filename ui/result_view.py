"""The Analyse page's result: the decision card or the grey "Not assessable" card, the notes,
the views with their overlays and marks, and the legend of the marks.

Whether a study or a view is in scope, the decision and each view's mark are read from the
result (`AnalysisResult.assessable`, `.scope_reasons`, `.decision`, `.finding_level(view)`,
computed once by the analysis pipeline); nothing here decides them. Colours keep their
meaning: the synthetic-data note is a neutral info note, the reasons a view is out of scope
are in error colour, and a study that is not assessable gets no decision headline: its
model output is shown only inside an expander that calls it unreliable.

A measurement model's result (cardiomegaly's cardiothoracic ratio) leads with the ratio, its
decision by the clinical rule and the two widths; the probability, a calibration of the
ratio, is secondary. Each view's overlay is `view_overlay.overlay_options` drawn by
`render_overlay` (the outputs' one choice of what a view shows: here its outlines and lines).
"""

from __future__ import annotations

import streamlit as st

from ui.display import JPEG_QUALITY, screen_views
from ui.markers import marker_editor
from ui.text import plain
from xray_ai.outputs.measurement_display import CTR_RULE_SHORT, study_ctr, view_ctr_text, widths_text
from xray_ai.outputs.overlay import finding_legend, render_overlay
from xray_ai.outputs.view_overlay import overlay_options
from xray_ai.result import AnalysisResult, ViewResult, warning_kind

__all__ = ["NOT_ASSESSABLE_TITLE", "UNRELIABLE_EXPANDER", "NOT_ASSESSABLE_CARD_KEY", "show_result_card",
           "show_notes", "show_views"]

NOT_ASSESSABLE_TITLE = "Not assessable"
UNRELIABLE_EXPANDER = "model output (unreliable for this image)"
NOT_ASSESSABLE_CARD_KEY = "not_assessable_card"  # the container's CSS class: st-key-not_assessable_card
_GREY_CARD = f"<style>.st-key-{NOT_ASSESSABLE_CARD_KEY} {{ background-color: rgba(128, 128, 128, 0.14); }}</style>"


def show_result_card(result: AnalysisResult) -> None:
    """The study's decision at the operating point, or the grey card saying it has none."""
    if not result.assessable:
        st.html(_GREY_CARD)
        with st.container(border=True, key=NOT_ASSESSABLE_CARD_KEY):
            st.caption(result.condition_name)
            st.markdown(f"### :gray[{NOT_ASSESSABLE_TITLE}]")
            st.markdown("No view of this study is in the model's scope, so the model gives no decision for it. "
                        "A clinician reads the images.")
            st.error(_bullets(plain(r) for r in result.scope_reasons), icon=":material/block:")
        return
    left_out = [v for v in result.views if not v.assessable]
    counted = f" (mean of {len(result.views) - len(left_out)} of {len(result.views)} views)" if left_out else ""
    if result.kind == "measurement":
        _measurement_card(result, counted)
    else:
        st.metric(result.condition_name, result.decision, f"probability {result.probability:.1%}{counted}",
                  delta_color="off", delta_arrow="off", border=True)
    if left_out:
        st.error(f"**Not counted:** {len(left_out)} of {len(result.views)} views are out of the model's scope and "
                 "do not count towards the study probability:\n" + _bullets(plain(r) for v in left_out for r in v.scope_reasons),
                 icon=":material/block:")


def show_notes(result: AnalysisResult) -> None:
    """The result's warnings: the synthetic-data note as a neutral info note; those the scope
    card already says (out of scope, unlike the training images) not again; the rest as warnings."""
    for warning in result.warnings:
        kind = warning_kind(warning)
        if kind == "synthetic":
            st.info(plain(warning), icon=":material/science:")
        elif kind != "scope":
            st.warning(plain(warning))


def show_views(result: AnalysisResult) -> float:
    """Each view as loaded beside its overlay (click to place a marker); returns the heatmap
    intensity chosen, for the PDF. A view out of scope, and every view of a study that is not
    assessable, shows its heatmap only in the unreliable-output expander, and no automatic mark."""
    markers = st.session_state.setdefault("analyse.markers", [])
    assessable = result.assessable
    if assessable:
        c1, c2, c3 = st.columns(3)
        intensity = c1.slider("Heatmap intensity", 0.0, 1.0, 0.5, 0.05, key="analyse.intensity")
        show_heatmap = c2.toggle("Heatmap", value=True, key="analyse.heatmap")
        annotate = c3.toggle("Automatic annotations", value=True, key="analyse.annotate")
        if len(result.views) > 1:
            _views_table(result)
    unreliable = [i for i, v in enumerate(result.views) if not (assessable and v.assessable)]
    screens = screen_views(result)  # screen-sized, once per result: redraws never touch full resolution
    for index, view in enumerate(result.views):
        left, right = st.columns(2)
        left.image(screens[index], caption=f"{plain(view.filename)} (as loaded; DICOM after windowing)", clamp=True,
                   output_format="JPEG")
        mine = [m for m in markers if m.view == index]
        if index in unreliable:  # no colour here: its map is shown only in the expander below
            options = overlay_options(result, view, show_heatmap=False, markers=mine)
        else:
            options = overlay_options(result, view, intensity, show_heatmap=show_heatmap, annotate=annotate,
                                      markers=mine)
        # view_overlay's two halves, so that tests/test_app.py can watch the finding level drawn
        overlay = render_overlay(screens[index], **options)
        with right:
            marker_editor(overlay, index, view.filename, _caption(result, view), jpeg_quality=JPEG_QUALITY)
    if assessable:
        st.caption("**Automatic marks.** " + " ".join(finding_legend(result)))
    if not unreliable:
        return intensity
    with st.expander(UNRELIABLE_EXPANDER):
        if not assessable:
            ctr = study_ctr(result)
            ratio = f"cardiothoracic ratio {ctr:.2f}, " if ctr is not None else ""
            st.markdown(f"The model's output, kept for the record: {ratio}probability {result.probability:.1%} "
                        f"(threshold {result.threshold:.3f}). **Unreliable**: the study is outside the model's "
                        "scope, so this is no decision and no mark is drawn.")
            _views_table(result)
            intensity = st.slider("Heatmap intensity", 0.0, 1.0, 0.5, 0.05, key="analyse.intensity")
        else:
            st.markdown("The heatmaps of the views out of the model's scope: **unreliable**, not counted, not marked.")
        columns = st.columns(2)
        for column, index in enumerate(unreliable):
            view = result.views[index]
            columns[column % 2].image(
                render_overlay(screens[index], **overlay_options(result, view, intensity)),
                caption=f"{plain(view.filename)}: heatmap, model output {view.probability:.1%} (unreliable)",
                output_format="JPEG")
    return intensity


# --- helpers -----------------------------------------------------------------------------


def _bullets(lines) -> str:
    return "\n".join(f"- {line}" for line in lines)


def _caption(result: AnalysisResult, view: ViewResult) -> str:
    if not result.assessable:
        return f"{plain(view.filename)}: not assessable, no heatmap or automatic mark; click to place a marker"
    if not view.assessable:
        return f"{plain(view.filename)}: out of scope, not counted; heatmap only under \"{UNRELIABLE_EXPANDER}\""
    if result.kind == "measurement":  # its mark is the outlines: the ratio says what they measured
        return f"{plain(view.filename)}: {view_ctr_text(view)} · calibrated probability {view.probability:.1%}"
    level = result.finding_level(view)
    return f"{plain(view.filename)}: probability {view.probability:.1%}" + (f" · {level}" if level else "")


def _measurement_card(result: AnalysisResult, counted: str) -> None:
    """The ratio and its decision as the headline, the rule and the widths under it, the
    calibrated probability as a secondary line."""
    ctr = study_ctr(result)
    figure = "not measured" if ctr is None else f"{ctr:.2f}"
    widths = widths_text(result)
    st.metric(f"{result.condition_name}: cardiothoracic ratio", f"{figure} — {result.decision}",
              CTR_RULE_SHORT + (f" · {widths}" if widths else " · heart or thorax outline not found"),
              delta_color="off", delta_arrow="off", border=True)
    st.caption(f"Calibrated probability {result.probability:.1%}{counted}: a logistic calibration of the ratio "
               f"(threshold {result.threshold:.3f}).")


def _views_table(result: AnalysisResult) -> None:
    column = "probability" if result.assessable else "model output (unreliable)"
    table = {"view": [plain(v.filename) for v in result.views]}
    if result.kind == "measurement":
        table["CTR"] = [f"{v.measurement.ctr:.2f}" if v.measurement is not None else "not measured"
                        for v in result.views]
    table[column] = [f"{v.probability:.1%}" for v in result.views]
    table["counted"] = ["yes" if v.assessable else "no: out of scope" for v in result.views]
    st.table(table)
