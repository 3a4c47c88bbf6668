"""Saving the registry and its audit log.

Saving validates first, is atomic (temporary file + rename) and keeps the previous version
as `<name>.bak`; every change made through the app or the CLI is appended to an audit log
(SQLite, beside the registry unless `XRAY_AI_AUDIT_DB` says otherwise).
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from xray_ai.registry.document import Registry, parse_registry
from xray_ai.registry.schema import default_registry_path

__all__ = ["save_registry", "audit_db_path", "read_audit_log"]


def audit_db_path(registry_path: Path) -> Path:
    """`$XRAY_AI_AUDIT_DB`, else `<registry stem>.audit.sqlite3` beside the registry."""
    env = os.environ.get("XRAY_AI_AUDIT_DB")
    return Path(env) if env else registry_path.with_name(registry_path.stem + ".audit.sqlite3")


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable list of what changed between two registry dicts."""
    changes = []
    for key in sorted(set(old) | set(new)):
        where = f"{prefix}{key}"
        if key not in old:
            changes.append(f"added {where}")
        elif key not in new:
            changes.append(f"removed {where}")
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            changes.extend(_diff(old[key], new[key], where + "."))
        elif old[key] != new[key]:
            changes.append(f"{where}: {old[key]!r} -> {new[key]!r}")
    return changes


def save_registry(registry: Registry, path: str | Path | None = None, *, user: str | None = None, action: str = "edit") -> list[str]:
    """Validate, then write atomically; keep the previous file as `.bak`; audit the change.

    Returns the list of changes written to the audit log (empty when nothing changed).
    """
    path = Path(path) if path is not None else (registry.path or default_registry_path())
    # As JSON will hold it (int dict keys become strings), so the diff compares like with like.
    new = json.loads(json.dumps(registry.to_dict(), ensure_ascii=False))
    parse_registry(new, path)  # never write an invalid registry
    old: dict = {}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
    changes = _diff(old, new)
    payload = json.dumps(new, indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            backup = path.with_name(path.name + ".bak")
            backup.write_bytes(path.read_bytes())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if changes:
        _append_audit(path, user or _current_user(), action, changes)
    return changes


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _connect(db: Path) -> sqlite3.Connection:
    con = sqlite3.connect(db, timeout=10)
    con.execute(
        "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, time TEXT NOT NULL, "
        "user TEXT NOT NULL, action TEXT NOT NULL, registry TEXT NOT NULL, changes TEXT NOT NULL)"
    )
    return con


def _append_audit(registry_path: Path, user: str, action: str, changes: list[str]) -> None:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with _connect(audit_db_path(registry_path)) as con:
        con.execute(
            "INSERT INTO audit (time, user, action, registry, changes) VALUES (?, ?, ?, ?, ?)",
            (now, user, action, str(registry_path.resolve()), json.dumps(changes)),
        )


def read_audit_log(registry_path: str | Path | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The most recent audit records, newest first."""
    registry_path = Path(registry_path) if registry_path is not None else default_registry_path()
    db = audit_db_path(registry_path)
    if not db.exists():
        return []
    with _connect(db) as con:
        rows = con.execute(
            "SELECT time, user, action, changes FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
    return [{"time": t, "user": u, "action": a, "changes": json.loads(c)} for t, u, a, c in rows]
