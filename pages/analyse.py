"""Analyse a study: upload views, pick a condition, read the result, adjust the heatmap, get the PDF."""

import streamlit as st

from ui.common import EXAMPLES_DIR, digest, get_manager, registry_or_stop, show_provenance
from ui.markers import marker_editor
from xray_ai import ImageLoadError
from xray_ai import load_image
from xray_ai import analysis
from xray_ai.explain.base import METHOD_NAMES, METHODS  # the method table; numpy only
from xray_ai.outputs.overlay import render_overlay
from xray_ai.outputs.report import build_report

EXAMPLE_FILES = ("rg3_tibia.dcm",)

st.title("Analyse a radiograph")
manager = get_manager()
registry = registry_or_stop(manager)

left, right = st.columns(2)
condition = left.selectbox("Condition", list(registry.conditions), format_func=lambda c: registry.conditions[c].name,
                           key="analyse.condition")
model_ids = [m.id for m in registry.models_for(condition)]
if not model_ids:
    st.info("No model is registered for this condition yet; an administrator can add one (see the README).")
    st.stop()
active = registry.active_models.get(condition)


def model_label(model_id: str) -> str:
    entry = registry.models[model_id]
    return f"{model_id} ({entry.profile}{f', ensemble of {len(entry.members)}' if entry.is_ensemble else ''})"


model_id = right.selectbox("Model", model_ids, index=model_ids.index(active) if active in model_ids else 0,
                           format_func=model_label, key=f"analyse.model.{condition}")
method = st.selectbox("Heatmap method", list(METHODS), format_func=METHOD_NAMES.get, key="analyse.method")
uploads = st.file_uploader("Radiographs (PNG, JPEG or DICOM; several files = the views of one study)",
                           type=["png", "jpg", "jpeg", "dcm", "dicom"], accept_multiple_files=True, key="analyse.uploads")
if st.button("Try an example", key="analyse.example"):
    st.session_state["analyse.use_example"] = True
files = [(u.name, u.getvalue()) for u in uploads or []]
if not files and st.session_state.get("analyse.use_example"):
    files = [(name, (EXAMPLES_DIR / name).read_bytes()) for name in EXAMPLE_FILES]
if not files:
    st.info("Upload one or more radiographs of one study, or try the example (a de-identified CR of a tibia).")
    st.stop()

images = []
for name, data in files:  # in memory: uploads never touch the disk
    try:
        images.append(load_image(data, filename=name))
    except ImageLoadError as exc:
        st.error(f"Could not read {exc}. The other files are analysed without it.")
if not images:
    st.stop()

key = (condition, model_id, method, tuple(digest(d) for _, d in files))
if st.session_state.get("analyse.key") != key:  # the model runs only when the study, model or method changes
    with st.spinner("Analysing (the first analysis also loads the model)..."):
        bar = st.progress(0.0, text=METHOD_NAMES[method]) if method == "lime" else None
        st.session_state["analyse.result"] = analysis.analyze(
            images, condition, manager=manager, model_id=model_id, method=method,
            progress=(lambda f: bar.progress(min(f, 1.0), text=METHOD_NAMES[method])) if bar else None)
        if bar:
            bar.empty()
    st.session_state["analyse.key"] = key
    st.session_state["analyse.markers"] = []
result = st.session_state["analyse.result"]

st.metric(result.condition_name, result.decision, f"probability {result.probability:.1%}", delta_color="off",
          delta_arrow="off", border=True)
show_provenance(result)
if len(result.views) > 1:
    st.table({"view": [v.filename for v in result.views], "probability": [f"{v.probability:.1%}" for v in result.views]})
for warning in result.warnings:
    st.warning(warning)

c1, c2, c3 = st.columns(3)
intensity = c1.slider("Heatmap intensity", 0.0, 1.0, 0.5, 0.05, key="analyse.intensity")
show_heatmap = c2.toggle("Heatmap", value=True, key="analyse.heatmap")
annotate = c3.toggle("Automatic annotations", value=True, key="analyse.annotate")
markers = st.session_state["analyse.markers"]
for index, view in enumerate(result.views):
    left, right = st.columns(2)
    left.image(view.image.pixels, caption=f"{view.filename} (as loaded; DICOM after windowing)", clamp=True)
    overlay = render_overlay(view.image.pixels, view.heatmap if show_heatmap else None, intensity, annotate=annotate,
                             probability=view.probability, placeholder=result.placeholder,
                             markers=[m for m in markers if m.view == index])
    with right:
        marker_editor(overlay, index, view.filename, f"{view.filename}: probability {view.probability:.1%}")

st.subheader("Clinician review")
agreement = st.radio("Your reading", ["not stated", "agree", "disagree"], horizontal=True, key="analyse.agreement")
notes = st.text_area("Clinician notes", key="analyse.notes")
include_patient = st.toggle("Include patient identifiers from DICOM in the report", value=False, key="analyse.patient")
st.download_button(
    "Download PDF report",
    # deferred: the PDF is built when the button is clicked, not on every slider move
    lambda: build_report(result, include_patient=include_patient, notes=notes or None, markers=markers,
                         agreement=None if agreement == "not stated" else agreement, intensity=intensity),
    file_name=f"xray_ai_report_{result.model_id}.pdf", mime="application/pdf", key="analyse.pdf",
)
