"""Analyse a study: upload views, pick a condition, read the result, adjust the heatmap, get the PDF."""

import streamlit as st

from ui.common import EXAMPLES_DIR, digest, get_manager, show_provenance
from xray_ai import ImageLoadError, load_image
from xray_ai.analysis import analyze
from xray_ai.overlay import render_overlay
from xray_ai.registry import RegistryError
from xray_ai.report import build_report

st.title("Analyse a radiograph")
manager = get_manager()
try:
    registry = manager.registry
except RegistryError as exc:
    st.error(f"The model registry is invalid: {exc}")
    st.stop()

conditions = list(registry.conditions)
condition = st.selectbox("Condition", conditions, format_func=lambda c: registry.conditions[c].name, key="analyse.condition")
models = registry.models_for(condition)
model_id = st.selectbox(
    "Model", [m.id for m in models], index=[m.id for m in models].index(registry.active_models[condition]),
    format_func=lambda i: f"{i} ({registry.models[i].profile})", key="analyse.model",
)
uploads = st.file_uploader(
    "Radiographs (PNG, JPEG or DICOM; several files = the views of one study)",
    type=["png", "jpg", "jpeg", "dcm", "dicom"], accept_multiple_files=True, key="analyse.uploads",
)
if st.button("Try an example", key="analyse.example"):
    st.session_state["analyse.use_example"] = True
files = [(u.name, u.getvalue()) for u in uploads or []]
if not files and st.session_state.get("analyse.use_example"):
    files = [(p.name, p.read_bytes()) for p in [EXAMPLES_DIR / "rg3_tibia.dcm"]]
if not files:
    st.info("Upload one or more radiographs of one study, or try the example.")
    st.stop()

images = []
for name, data in files:  # in memory: uploads never touch the disk
    try:
        images.append(load_image(data, filename=name))
    except ImageLoadError as exc:
        st.error(f"Could not read {exc}")
if not images:
    st.stop()

key = (condition, model_id, tuple(digest(d) for _, d in files))
if st.session_state.get("analyse.key") != key:
    with st.spinner("Analysing (the first analysis also loads the model)..."):
        st.session_state["analyse.result"] = analyze(images, condition, manager=manager, model_id=model_id)
    st.session_state["analyse.key"] = key
result = st.session_state["analyse.result"]

st.metric(result.condition_name, result.decision, f"probability {result.probability:.1%}", delta_color="off")
show_provenance(result)
for w in result.warnings:
    st.warning(w)

intensity = st.slider("Heatmap intensity", 0.0, 1.0, 0.5, 0.05, key="analyse.intensity")
annotate = st.toggle("Automatic annotations", value=True, key="analyse.annotate")
for view in result.views:
    left, right = st.columns(2)
    left.image(view.image.pixels, caption=f"{view.filename} (as loaded)", clamp=True)
    overlay = render_overlay(view.image.pixels, view.heatmap, intensity, annotate=annotate,
                             probability=view.probability, placeholder=result.placeholder)
    right.image(overlay, caption=f"{view.filename}: probability {view.probability:.1%}")

include_patient = st.toggle("Include patient identifiers in the report", value=False, key="analyse.patient")
notes = st.text_area("Clinician notes", key="analyse.notes")
st.download_button(
    "Download PDF report",
    build_report(result, include_patient=include_patient, notes=notes or None, intensity=intensity),
    file_name=f"xray_ai_report_{result.model_id}.pdf", mime="application/pdf", key="analyse.pdf",
)
