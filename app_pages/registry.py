"""Model registry administration: what is registered and active; switch and edit (administrators)."""

import dataclasses

import streamlit as st

from ui.admin import admin_gate
from ui.common import get_manager, registry_or_stop
from ui.text import code, plain
from xray_ai.serving.verify import check_entry
from xray_ai.registry import RegistryError, edit_registry, read_audit_log

FLASH_KEY = "registry.flash"  # the last edit's outcome, shown after the rerun that redraws the table

st.title("Model registry")
manager = get_manager()
registry = registry_or_stop(manager)
flash = st.session_state.pop(FLASH_KEY, None)
if flash:  # (kind, text): the table below already shows the registry as that edit left it
    (st.success if flash[0] == "success" else st.info)(flash[1])
st.success(f"{code(registry.path)} is valid: {len(registry.models)} models, "
           f"{len(registry.active_models)} conditions served.")

active = set(registry.active_models.values())
problems = {m.id: check_entry(m, registry) for m in registry.models.values()}
st.dataframe(  # a dataframe shows its cells as text: no Markdown to escape
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

admin = admin_gate(manager.registry_path)
if admin:
    st.subheader("Switch the active model")
    condition = st.selectbox("Condition", list(registry.conditions), key="registry.condition",
                             format_func=lambda c: registry.conditions[c].name)
    candidates = [m.id for m in registry.models_for(condition)]
    active_id = registry.active_models.get(condition)
    if not candidates:
        st.info(plain(f"No model is registered for {registry.conditions[condition].name}: register one first "
                      "(python -m xray_ai train ... --register)."))
    else:
        chosen = st.selectbox("Model", candidates, index=candidates.index(active_id) if active_id in candidates else 0,
                              # the active model in the key: after a switch the picker is drawn
                              # anew, with its "(active)" label moved (Streamlit keeps a keyed
                              # widget's option labels otherwise)
                              key=f"registry.model.{condition}.{active_id}",
                              format_func=lambda m: f"{m} (active)" if m == active_id else m)
        if st.button("Activate", key="registry.activate"):
            try:  # read, switch and save under the registry's lock (a concurrent edit is never undone)
                changes = edit_registry(manager.registry_path, lambda current: current.with_active(condition, chosen),
                                        user=admin, action="activate")
            except RegistryError as exc:
                st.error(plain(exc))
            else:
                st.session_state[FLASH_KEY] = ("success", plain("; ".join(changes))) if changes else (
                    "info", "No change: it was already active.")
                st.rerun()  # redraw the table and the audit log with the switch in them

    st.subheader("Edit threshold and notes")
    entry = registry.model(st.selectbox("Model to edit", list(registry.models), key="registry.edit_model"))
    threshold = st.number_input("Threshold", 0.0, 1.0, entry.threshold, 0.01, format="%.3f", key=f"registry.t.{entry.id}")
    method = st.text_input("How the threshold was chosen", entry.threshold_method, key=f"registry.m.{entry.id}",
                           help="Required when the threshold changes: the split and the rule (e.g. Youden's J on "
                                "the validation split); it is saved with the threshold and in the audit log.")
    notes = st.text_area("Notes", entry.notes, key=f"registry.n.{entry.id}")
    if st.button("Save changes", key="registry.save"):
        if threshold != entry.threshold and method.strip() == entry.threshold_method.strip():
            st.error(plain(f"Not saved: the threshold changes from {entry.threshold:g} to {threshold:g}, so say how "
                           "the new one was chosen (the field still holds the old threshold's method)."))
        else:
            def change(current):
                edited = dataclasses.replace(current.model(entry.id), threshold=threshold,
                                             threshold_method=method.strip() or entry.threshold_method, notes=notes)
                return current.with_model(edited)

            try:
                changes = edit_registry(manager.registry_path, change, user=admin, action="edit model")
            except RegistryError as exc:  # the form keeps what was typed
                st.error(plain(f"Not saved: {exc}"))
            else:
                st.session_state[FLASH_KEY] = ("success", plain("; ".join(changes))) if changes else ("info", "No change.")
                st.rerun()

st.subheader("Audit log")
log = read_audit_log(manager.registry_path, limit=50)
if log:
    st.dataframe([dict(entry, changes="; ".join(entry["changes"])) for entry in log], hide_index=True,
                 column_config={"changes": st.column_config.TextColumn(width="large")})
else:
    st.caption("No changes recorded yet.")
