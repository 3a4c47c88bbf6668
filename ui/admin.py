"""The administrator gate of the registry page: throttled, audited, and expiring when idle.

The password is checked by `xray_ai.auth.attempt_login` (a growing delay after failures, a
lockout after `MAX_FAILURES`, every attempt in the registry's audit log with the name
given). An unlock lasts while the administrator is active: after `UNLOCK_IDLE_S` without
a rerun of the page the session is read-only again. Messages are plain text.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import streamlit as st

from ui.text import plain
from xray_ai.auth import ENV_VAR, UNLOCK_IDLE_S, attempt_login, configured_hash
from xray_ai.registry import RegistryError

__all__ = ["admin_gate", "NAME_KEY", "SEEN_KEY"]

NAME_KEY, SEEN_KEY = "admin.name", "admin.last_seen"


def admin_gate(registry_path: str | Path) -> str | None:
    """The administrator's name once unlocked in this session; None (read-only) otherwise.

    `registry_path`: the registry whose audit log records the attempts."""
    now = time.monotonic()
    if st.session_state.get(NAME_KEY):
        if now - st.session_state.get(SEEN_KEY, now) <= UNLOCK_IDLE_S:
            st.session_state[SEEN_KEY] = now
            # a shared workstation: lock again by hand, not only after the idle time
            if st.button("Lock editing", key="admin.lock"):
                del st.session_state[NAME_KEY]
                st.rerun()
            return st.session_state[NAME_KEY]
        del st.session_state[NAME_KEY]
        st.info(f"Editing was locked again after {UNLOCK_IDLE_S // 60} min without activity; unlock it again.")
    stored = configured_hash(st.secrets)
    if not stored:
        st.info(
            "Read-only. Editing needs an administrator password: run `python -m xray_ai hash-password` "
            f"and set `{ENV_VAR}` (or `admin_password_hash` in `.streamlit/secrets.toml`) to its output, "
            "in single quotes in a shell, then restart the app."
        )
        return None
    with st.form("admin.login"):
        name = st.text_input("Your name (recorded in the audit log)", key="admin.name_input")
        password = st.text_input("Administrator password", type="password", key="admin.password")
        if st.form_submit_button("Unlock editing"):
            try:
                result = attempt_login(name, password, stored, registry_path)
            except ValueError as exc:  # the configured hash is unusable: say so, as plain text
                st.error(plain(exc))
                return None
            except (RegistryError, OSError, sqlite3.Error) as exc:
                st.error(plain(f"Cannot record the login attempt, so editing stays locked: {exc}"))
                return None
            if result.ok:
                st.session_state[NAME_KEY] = result.name
                st.session_state[SEEN_KEY] = time.monotonic()
                st.rerun()
            st.error(plain(result.message))
    return None
