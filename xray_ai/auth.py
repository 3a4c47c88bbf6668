"""Administrator password: a stored salted hash, checked in constant time, with throttling.

The app's registry page is editable only when a hash is configured, in the environment
variable `XRAY_AI_ADMIN_PASSWORD_HASH` or as `admin_password_hash` in Streamlit's
secrets. Make one with `python -m xray_ai hash-password`. The format is
`pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>` (hashlib's PBKDF2-HMAC-SHA256, so no
extra dependency); the plain password is never stored. A hash with fewer than
`MIN_ITERATIONS` rounds is refused (it would make guessing cheap), and so is one whose `$`
signs a shell has eaten (set the variable in single quotes).

`attempt_login` is the only way the app checks a password. Attempts are serialised (one at
a time, across threads and processes) and recorded in the registry's audit log: every
failure with its time and the name given, every success, every lockout. After a second
consecutive failure the next attempt must wait (`delay_after`, doubling up to
`MAX_DELAY_S`); after `MAX_FAILURES` consecutive failures within `LOCKOUT_S` nobody can
log in for `LOCKOUT_S`. A success resets the count. The app ends an unlock after
`UNLOCK_IDLE_S` without activity (ui/admin.py).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "hash_password",
    "verify_password",
    "configured_hash",
    "attempt_login",
    "LoginResult",
    "delay_after",
    "ENV_VAR",
    "SECRET_KEY",
    "MIN_ITERATIONS",
    "MAX_FAILURES",
    "LOCKOUT_S",
    "UNLOCK_IDLE_S",
]

ENV_VAR = "XRAY_AI_ADMIN_PASSWORD_HASH"
SECRET_KEY = "admin_password_hash"
_ALGORITHM = "pbkdf2_sha256"
_ITERATIONS = 600_000  # OWASP 2023 recommendation for PBKDF2-HMAC-SHA256
MIN_ITERATIONS = 100_000
_MAX_ITERATIONS = 20_000_000  # beyond this one check takes tens of seconds: a typo, not a policy

MAX_FAILURES = 5
LOCKOUT_S = 15 * 60
MAX_DELAY_S = 60
UNLOCK_IDLE_S = 15 * 60

FAILED, SUCCEEDED, LOCKED = "login failed", "login", "login lockout"
_FORM = f"{_ALGORITHM}$ITERATIONS$SALT$HASH"
_process_lock = threading.Lock()


def hash_password(password: str, *, iterations: int = _ITERATIONS, salt: bytes | None = None) -> str:
    """A storable hash of `password` (salted PBKDF2-HMAC-SHA256, at least MIN_ITERATIONS rounds)."""
    if not password:
        raise ValueError("the password must not be empty")
    if not MIN_ITERATIONS <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be in [{MIN_ITERATIONS:,}, {_MAX_ITERATIONS:,}], got {iterations:,}")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{_ALGORITHM}${iterations}${salt.hex()}${digest.hex()}"


def _parse(stored: str) -> tuple[bytes, bytes, int]:
    """(salt, expected digest, rounds) of a configured hash, or ValueError saying what is wrong."""
    text = (stored or "").strip()
    try:
        algorithm, iterations, salt_hex, digest_hex = text.split("$")
        if algorithm != _ALGORITHM:
            raise ValueError(algorithm)
        salt, expected, rounds = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex), int(iterations)
        if not salt or len(expected) != 32:
            raise ValueError("lengths")
    except ValueError:
        shell = ""
        if text.startswith(_ALGORITHM) and text.count("$") < 3:
            shell = (" It has lost its '$' signs, as a shell does to an unquoted value: set it in single quotes, "
                     f"export {ENV_VAR}='{_ALGORITHM}$...'.")
        raise ValueError(
            f"the configured admin password hash is not in the form {_FORM}; make one with "
            f"`python -m xray_ai hash-password`.{shell}"
        ) from None
    if rounds < MIN_ITERATIONS:
        raise ValueError(
            f"the configured admin password hash uses {rounds:,} PBKDF2 iterations, below the minimum of "
            f"{MIN_ITERATIONS:,} (so cheap to guess); make a new one with `python -m xray_ai hash-password`"
        )
    if rounds > _MAX_ITERATIONS:
        raise ValueError(f"the configured admin password hash uses {rounds:,} PBKDF2 iterations, above "
                         f"{_MAX_ITERATIONS:,}; make a new one with `python -m xray_ai hash-password`")
    return salt, expected, rounds


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored`; the comparison takes constant time.

    Raises:
        ValueError: `stored` is not a usable hash (wrong form, '$' signs lost to a shell,
            fewer than MIN_ITERATIONS rounds): a configuration error the administrator
            must see, not a failed login.
    """
    salt, expected, rounds = _parse(stored)
    actual = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, rounds)
    return hmac.compare_digest(actual, expected)


def configured_hash(secrets_mapping: object | None = None) -> str | None:
    """The configured hash: the environment first, then a secrets mapping (st.secrets)."""
    value = os.environ.get(ENV_VAR)
    if value:
        return value
    if secrets_mapping is not None:
        try:
            return secrets_mapping.get(SECRET_KEY)  # type: ignore[attr-defined]
        except Exception:  # st.secrets raises when no secrets file exists at all
            return None
    return None


# --------------------------------------------------------------------------- throttling


@dataclass(frozen=True)
class LoginResult:
    """What one attempt gave: `ok`, a sentence for the user, and the name recorded."""

    ok: bool
    message: str
    name: str
    wait_s: float = 0.0
    checked: bool = False  # whether the password was compared at all


def delay_after(failures: int) -> float:
    """Seconds the next attempt must wait after `failures` consecutive failures: none after
    the first (a typo), then 2, 4, 8 ... up to MAX_DELAY_S."""
    return 0.0 if failures < 2 else float(min(2 ** (failures - 1), MAX_DELAY_S))


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def attempt_login(name: str, password: str, stored: str, registry_path: str | Path,
                  now: _dt.datetime | None = None) -> LoginResult:
    """Check one login attempt against `stored`, throttled and audited (module docstring).

    Raises:
        ValueError: the configured hash is unusable (checked before anything is counted).
        RegistryError: the audit log cannot be written (then nobody logs in: fail closed).
    """
    from xray_ai.registry import append_audit, audit_db_path, audit_events
    from xray_ai.registry.store import registry_lock

    _parse(stored)  # a configuration error is not a failed attempt
    name = " ".join((name or "").split())[:120]
    who = name or "(no name given)"
    registry_path = Path(registry_path)
    db = audit_db_path(registry_path)
    with _process_lock, registry_lock(db):
        now = now or _now()
        events = audit_events(registry_path, (FAILED, SUCCEEDED, LOCKED), now - _dt.timedelta(seconds=LOCKOUT_S))
        last_success = max((i for i, e in enumerate(events) if e["action"] == SUCCEEDED), default=-1)
        recent = events[last_success + 1:]
        failures = [e for e in recent if e["action"] == FAILED]
        lockouts = [e for e in recent if e["action"] == LOCKED]
        if lockouts:
            until = lockouts[-1]["time"] + _dt.timedelta(seconds=LOCKOUT_S)
            if now < until:
                wait = (until - now).total_seconds()
                return LoginResult(False, f"Editing is locked after {MAX_FAILURES} failed attempts; try again in "
                                          f"{_minutes(wait)}.", who, wait)
            failures = [e for e in failures if e["time"] > lockouts[-1]["time"]]
        if failures:
            ready = failures[-1]["time"] + _dt.timedelta(seconds=delay_after(len(failures)))
            if now < ready:
                wait = (ready - now).total_seconds()
                return LoginResult(False, f"{len(failures)} failed attempts: wait {wait:.0f} s before the next one.",
                                   who, wait)
        if not name:
            return LoginResult(False, "Enter your name: every change is recorded with it.", who)
        if verify_password(password, stored):
            append_audit(registry_path, name, SUCCEEDED, ["administrator login"], now)
            return LoginResult(True, "Editing unlocked.", name, checked=True)
        count = len(failures) + 1
        append_audit(registry_path, name, FAILED, [f"failed administrator login as {name!r} ({count} in a row)"], now)
        if count >= MAX_FAILURES:
            append_audit(registry_path, name, LOCKED,
                         [f"editing locked for {LOCKOUT_S // 60} min after {count} failed logins"], now)
            return LoginResult(False, f"Wrong administrator password. Editing is now locked for "
                                      f"{LOCKOUT_S // 60} min after {count} failed attempts.", name, LOCKOUT_S, True)
        wait = delay_after(count)
        then = f" Wait {wait:.0f} s before the next attempt." if wait else ""
        return LoginResult(False, f"Wrong administrator password.{then}", name, wait, True)


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} min"
