"""Officers' passwords: scrypt (RFC 7914) from the standard library, parameters kept per hash.

scrypt is memory-hard, so a stolen user table costs an attacker 16 MiB and ~50 ms per guess on
a GPU-less machine as on ours. The parameters are stored with each hash, so they can be raised
later without invalidating existing passwords (the next login rehashes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

N, R, P = 2**14, 8, 1  # 16 MiB; OWASP's minimum for scrypt is N=2**17 with r=8 at p=1 ...
# ... for password storage at web scale; an operations centre has tens of officers and a
# two-core console, and each login must not stall the alarm page: 2**14 takes ~50 ms here.
MAX_PASSWORD_CHARS = 1024  # longer is refused before hashing: no CPU for a megabyte "password"
MIN_PASSWORD_CHARS = 10


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, N, R, P)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time comparison; False for any malformed stored value (never an exception)."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def needs_rehash(stored: str) -> bool:
    return not stored.startswith(f"scrypt${N}${R}${P}$")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
