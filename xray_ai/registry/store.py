"""Saving the registry and its audit log.

Saving validates first, is atomic (temporary file + rename) and keeps the previous version
as `<name>.bak`; every change made through the app or the CLI is appended to an audit log
(SQLite, beside the registry unless `XRAY_AI_AUDIT_DB` says otherwise).

Edits are serialised: `save_registry` and `edit_registry` hold an exclusive lock on
`<name>.lock` beside the registry (fcntl.flock; released when the process ends, so a crash
leaves no stale lock) for the whole read-modify-write. An edit that changes nothing writes
nothing and audits nothing; every write is audited, inside the lock, so the audit log's
order is the order of the writes. The file keeps its mode (0644 stays 0644). A registry
value read earlier (`Registry.source`) is saved as the change it makes to what it read,
applied to the file as it is now, so a stale read never undoes a concurrent change.
`edit_registry` reads, changes and saves under one lock (the CLI's `activate`, the app).

The audit log also records the app's administrator logins (`append_audit`, `audit_events`,
used by xray_ai.auth).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import getpass
import json
import os
import sqlite3
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from xray_ai.registry.document import Registry, parse_registry, read_registry_json
from xray_ai.registry.schema import RegistryError, default_registry_path

__all__ = ["save_registry", "edit_registry", "registry_lock", "audit_db_path", "read_audit_log", "append_audit",
           "audit_events", "LOCK_TIMEOUT_S"]

LOCK_TIMEOUT_S = 30.0
_DELETED = object()


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


@contextlib.contextmanager
def registry_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the exclusive lock of the registry at `path` (`<name>.lock` beside it)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, as before
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RegistryError(f"{path}: cannot create the lock file {lock_path.name} ({exc.strerror or exc})") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryError(f"{path}: another edit holds {lock_path.name} for more than {timeout:.0f} s; "
                                        "try again") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


def save_registry(registry: Registry, path: str | Path | None = None, *, user: str | None = None, action: str = "edit") -> list[str]:
    """Validate, then write atomically under the registry's lock; keep the previous file as
    `.bak`; audit the change.

    When `registry` was read from the file (`registry.source`) and the file changed since,
    only what `registry` changes relative to what it read is applied to the file as it is
    now (a concurrent edit is kept, never undone by a stale copy).

    Returns the list of changes written to the audit log; empty when nothing changed, and
    then nothing is written.
    """
    path = Path(path) if path is not None else (registry.path or default_registry_path())
    with registry_lock(path):
        return _save_locked(registry, path, user, action)


def edit_registry(path: str | Path | None, edit: Callable[[Registry], Registry], *, user: str | None = None,
                  action: str = "edit") -> list[str]:
    """Read the registry, `edit` it and save the result, all under its lock: the edit sees
    the file as it is. Returns the changes (empty: nothing written). RegistryError from
    reading, from `edit` or from validating the result."""
    from xray_ai.registry.document import load_registry

    path = Path(path) if path is not None else default_registry_path()
    with registry_lock(path):
        current = load_registry(path)
        return _save_locked(edit(current), path, user, action)


def _save_locked(registry: Registry, path: Path, user: str | None, action: str) -> list[str]:
    # As JSON will hold it (int dict keys become strings), so the diff compares like with like.
    new = json.loads(json.dumps(registry.to_dict(), ensure_ascii=False))
    parse_registry(new, path)  # never write an invalid registry
    old: dict = {}
    if path.exists():
        try:
            old = read_registry_json(path)
        except RegistryError:
            old = {}  # an unreadable file is replaced whole, as before
    base = registry.source
    if base is not None and old and base != old:
        base = json.loads(json.dumps(base, ensure_ascii=False))
        new = _rebased(base, new, old)
        try:
            parse_registry(new, path)
        except RegistryError as exc:
            raise RegistryError(f"the registry changed while this edit was made, and the edit no longer fits it: "
                                f"{exc}") from None
    changes = _diff(old, new)
    if not changes:
        return []  # nothing to write: the file, its .bak and the audit log stay as they are
    payload = json.dumps(new, indent=2, ensure_ascii=False) + "\n"
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fchmod(fh.fileno(), mode)  # mkstemp makes 0600; the registry keeps its own mode
            os.fsync(fh.fileno())
        if path.exists():
            backup = path.with_name(path.name + ".bak")
            backup.write_bytes(path.read_bytes())
            os.chmod(backup, mode)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    append_audit(path, user or _current_user(), action, changes)
    return changes


def _rebased(base: dict, new: dict, current: dict) -> dict:
    """`current` with the changes that turn `base` into `new` (leaf by leaf) applied to it."""
    merged = copy.deepcopy(current)

    def walk(b: Any, n: Any, target: dict, keys: tuple) -> None:
        for key in set(b) | set(n):
            bv, nv = b.get(key, _DELETED), n.get(key, _DELETED)
            if bv == nv:
                continue
            if isinstance(bv, dict) and isinstance(nv, dict) and isinstance(target.get(key), dict):
                walk(bv, nv, target[key], keys + (key,))
            elif nv is _DELETED:
                target.pop(key, None)
            else:
                target[key] = copy.deepcopy(nv)

    walk(base, new, merged, ())
    return merged


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


def append_audit(registry_path: Path, user: str, action: str, changes: list[str],
                 when: _dt.datetime | None = None) -> None:
    """Append one record to the registry's audit log (at `when`, default now; UTC)."""
    now = (when or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc).isoformat(timespec="seconds")
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


def audit_events(registry_path: str | Path, actions: tuple[str, ...], since: _dt.datetime) -> list[dict[str, Any]]:
    """Audit records of the given actions at or after `since` (aware datetime), oldest first."""
    db = audit_db_path(Path(registry_path))
    if not db.exists():
        return []
    marks = ", ".join("?" for _ in actions)
    with _connect(db) as con:
        rows = con.execute(
            f"SELECT time, user, action, changes FROM audit WHERE action IN ({marks}) ORDER BY id",
            actions,
        ).fetchall()
    out = []
    for t, u, a, c in rows:
        try:
            when = _dt.datetime.fromisoformat(t)
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        if when >= since:
            out.append({"time": when, "user": u, "action": a, "changes": json.loads(c)})
    return out
