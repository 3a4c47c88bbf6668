"""Administrator password: a stored salted hash, checked in constant time.

The app's registry page is editable only when a hash is configured, in the environment
variable `XRAY_AI_ADMIN_PASSWORD_HASH` or as `admin_password_hash` in Streamlit's
secrets. Make one with `python -m xray_ai hash-password`. The format is
`pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>` (hashlib's PBKDF2-HMAC-SHA256, so no
extra dependency); the plain password is never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

__all__ = ["hash_password", "verify_password", "ENV_VAR", "SECRET_KEY"]

ENV_VAR = "XRAY_AI_ADMIN_PASSWORD_HASH"
SECRET_KEY = "admin_password_hash"
_ALGORITHM = "pbkdf2_sha256"
_ITERATIONS = 600_000  # OWASP 2023 recommendation for PBKDF2-HMAC-SHA256


def hash_password(password: str, *, iterations: int = _ITERATIONS, salt: bytes | None = None) -> str:
    """A storable hash of `password` (salted PBKDF2-HMAC-SHA256)."""
    if not password:
        raise ValueError("the password must not be empty")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{_ALGORITHM}${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored`; the comparison takes constant time.

    Raises:
        ValueError: `stored` is not a hash made by hash_password (a configuration error
            the administrator must see, not a failed login).
    """
    try:
        algorithm, iterations, salt_hex, digest_hex = stored.strip().split("$")
        if algorithm != _ALGORITHM:
            raise ValueError(algorithm)
        salt, expected, rounds = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex), int(iterations)
    except ValueError:
        raise ValueError(
            f"the configured admin password hash is not in the form {_ALGORITHM}$ITERATIONS$SALT$HASH; "
            "make one with `python -m xray_ai hash-password`"
        ) from None
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
