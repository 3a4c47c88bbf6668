"""The administrator gate of the registry page."""

from __future__ import annotations

import streamlit as st

from xray_ai.auth import ENV_VAR, configured_hash, verify_password

__all__ = ["admin_gate"]


def admin_gate() -> str | None:
    """The administrator's name once unlocked in this session; None (read-only) otherwise."""
    if st.session_state.get("admin.name"):
        return st.session_state["admin.name"]
    stored = configured_hash(st.secrets)
    if not stored:
        st.info(
            "Read-only. Editing needs an administrator password: run `python -m xray_ai hash-password` "
            f"and set `{ENV_VAR}` (or `admin_password_hash` in `.streamlit/secrets.toml`) to its output, "
            "then restart the app."
        )
        return None
    with st.form("admin.login"):
        name = st.text_input("Your name (recorded in the audit log)", key="admin.name_input")
        password = st.text_input("Administrator password", type="password", key="admin.password")
        if st.form_submit_button("Unlock editing"):
            try:
                ok = verify_password(password, stored)
            except ValueError as exc:
                st.error(str(exc))
                return None
            if not name.strip():
                st.error("Enter your name: every change is recorded with it.")
            elif not ok:
                st.error("Wrong administrator password.")
            else:
                st.session_state["admin.name"] = name.strip()
                st.rerun()
    return None
