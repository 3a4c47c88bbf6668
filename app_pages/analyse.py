"""Analyse a study: upload views, pick a condition, read the result, adjust the heatmap, get the PDF."""

import streamlit as st

from ui.common import digest, get_manager, registry_or_stop, show_provenance
from ui.examples import example_picker
from ui.result_view import show_notes, show_result_card, show_views
from ui.text import plain
from xray_ai import ImageLoadError, analysis, load_image
from xray_ai.explain.base import DEFAULT_METHOD, METHOD_NAMES, METHODS  # the method table; numpy only
from xray_ai.outputs.report import build_report

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
    kind = f", ensemble of {len(entry.members)}" if entry.is_ensemble else (
        ", measures the CTR" if entry.is_measurement else "")
    return f"{model_id} ({entry.profile}{kind})"


model_id = right.selectbox("Model", model_ids, index=model_ids.index(active) if active in model_ids else 0,
                           format_func=model_label, key=f"analyse.model.{condition}")
if registry.models[model_id].is_measurement:  # it shows its outlines; no heatmap method applies
    method = DEFAULT_METHOD
    st.caption("This model measures the cardiothoracic ratio and draws the heart and thorax outlines it measured; "
               "heatmap methods do not apply.")
else:
    method = st.selectbox("Heatmap method", list(METHODS), format_func=METHOD_NAMES.get, key="analyse.method")
uploads = st.file_uploader("Radiographs (PNG, JPEG or DICOM; several files = the views of one study)",
                           type=["png", "jpg", "jpeg", "dcm", "dicom"], accept_multiple_files=True, key="analyse.uploads")
example = example_picker(condition)
files = [(u.name, u.getvalue()) for u in uploads or []] or example
if not files:
    st.info("Upload one or more radiographs of one study, or pick an example and click \"Try an example\": "
            "synthetic phantoms made for this condition, or real radiographs (out of scope for the "
            "synthetic-data models).")
    st.stop()

digests = tuple((name, digest(data)) for name, data in files)
decoded = st.session_state.get("analyse.decoded")
if decoded is None or decoded[0] != digests:  # decoded once per set of files, not on every slider move
    images, problems = [], []
    for name, data in files:  # in memory: uploads never touch the disk
        try:
            images.append(load_image(data, filename=name))
        except ImageLoadError as exc:
            problems.append(f"Could not read {exc}. The other files are analysed without it.")
    decoded = (digests, images, problems)
    st.session_state["analyse.decoded"] = decoded
_, images, problems = decoded
for problem in problems:
    st.error(plain(problem))
if not images:
    st.stop()

key = (condition, model_id, method, tuple(d for _, d in digests))
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

show_result_card(result)  # the decision, or the grey "Not assessable" card with the reasons
show_provenance(result)
show_notes(result)
intensity = show_views(result)
markers = st.session_state["analyse.markers"]

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
