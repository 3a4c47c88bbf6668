"""Model registry administration: what is registered and active; switch and edit (administrators)."""

import dataclasses

import streamlit as st

from ui.admin import admin_gate
from ui.common import get_manager, registry_or_stop
from xray_ai.serving.verify import check_entry
from xray_ai.registry import RegistryError, read_audit_log, save_registry

st.title("Model registry")
manager = get_manager()
registry = registry_or_stop(manager)
st.success(f"`{registry.path}` is valid: {len(registry.models)} models, {len(registry.active_models)} conditions served.")

active = set(registry.active_models.values())
problems = {m.id: check_entry(m, registry) for m in registry.models.values()}
st.dataframe(
    [
        {"model id": m.id, "condition": m.condition, "active": m.id in active, "kind": m.kind,
         "members": ", ".join(m.members), "architecture": m.architecture,
         "profile": m.profile, "version": m.version, "threshold": m.threshold, "trained on": m.trained_on.describe(),
         "file": problems[m.id] or ("members verified (sha256)" if m.is_ensemble else "verified (sha256)")}
        for m in registry.models.values()
    ],
    hide_index=True,
)
if any(problems[m] for m in active):
    st.error("Some active models cannot be verified: the app serves a PLACEHOLDER for those conditions.")

admin = admin_gate()
if admin:
    st.subheader("Switch the active model")
    condition = st.selectbox("Condition", list(registry.conditions), key="registry.condition",
                             format_func=lambda c: registry.conditions[c].name)
    candidates = [m.id for m in registry.models_for(condition)]
    active_id = registry.active_models.get(condition)
    chosen = st.selectbox("Model", candidates, index=candidates.index(active_id) if active_id in candidates else 0,
                          key=f"registry.model.{condition}")
    if st.button("Activate", key="registry.activate"):
        try:
            changes = save_registry(registry.with_active(condition, chosen), user=admin, action="activate")
            st.success("; ".join(changes) or "No change: it was already active.")
        except RegistryError as exc:
            st.error(str(exc))

    st.subheader("Edit threshold and notes")
    entry = registry.model(st.selectbox("Model to edit", list(registry.models), key="registry.edit_model"))
    threshold = st.number_input("Threshold", 0.0, 1.0, entry.threshold, 0.01, format="%.3f", key=f"registry.t.{entry.id}")
    method = st.text_input("How the threshold was chosen", entry.threshold_method, key=f"registry.m.{entry.id}")
    notes = st.text_area("Notes", entry.notes, key=f"registry.n.{entry.id}")
    if st.button("Save changes", key="registry.save"):
        try:
            edited = dataclasses.replace(entry, threshold=threshold, threshold_method=method, notes=notes)
            changes = save_registry(registry.with_model(edited), user=admin, action="edit model")
            st.success("; ".join(changes) or "No change.")
        except RegistryError as exc:  # the form keeps what was typed
            st.error(f"Not saved: {exc}")

st.subheader("Audit log")
log = read_audit_log(manager.registry_path, limit=50)
if log:
    st.dataframe([dict(entry, changes="; ".join(entry["changes"])) for entry in log], hide_index=True)
else:
    st.caption("No changes recorded yet.")
