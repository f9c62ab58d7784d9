"""The centre's Ed25519 key: its files, and the commands it signs.

The private key signs commands for every school, so its file must be the commanding user's
alone (a file others may read or write is refused with the chmod that fixes it), and a key
pair is never overwritten: replacing the key silently would lock every box out. A box holds
only the public key (``commands.public_key_file``).
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import stat
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.clock import rfc3339_ms
from agent.commands.args import STANDARD
from agent.commands.wire import (
    COMMAND_VERSION,
    MAX_LIFETIME_S,
    MAX_PAYLOAD_BYTES,
    CommandRejected,
    Scalar,
    check_args,
    check_structure,
    signing_bytes,
)
from agent.errors import AgentError

DEFAULT_TTL_S: Final = 60.0
_KEY_FILE_MAX = 64 * 1024


class KeyFileError(AgentError, ValueError):
    """A key file is missing, unreadable, exposed to other users, or not an Ed25519 key."""


def sign_command(
    private_key: Ed25519PrivateKey,
    site_id: str,
    name: str,
    args: Mapping[str, Scalar],
    ttl_s: float = DEFAULT_TTL_S,
    now: float | None = None,
) -> bytes:
    """A signed command payload, ready to publish on ``{prefix}/{site_id}/cmd``.

    Raises CommandRejected (with the reason the box would give) for anything a box would refuse
    on its face, so a bad command fails at the centre, not silently at the school.
    """
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError("private_key must be an Ed25519PrivateKey (see load_private_key)")
    if not (isinstance(ttl_s, int | float) and math.isfinite(ttl_s) and ttl_s > 0):
        raise CommandRejected("bad_lifetime: ttl_s must be a positive number of seconds")
    if ttl_s > MAX_LIFETIME_S:
        raise CommandRejected(f"lifetime_too_long: at most {MAX_LIFETIME_S:g} s")
    issued_ms = math.floor((time.time() if now is None else now) * 1000)
    doc: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "site_id": site_id,
        "name": name,
        "args": dict(args),
        "issued_at": rfc3339_ms(issued_ms),
        "expires_at": rfc3339_ms(issued_ms + max(1, round(ttl_s * 1000))),
        "nonce": secrets.token_hex(16),
        "v": COMMAND_VERSION,
    }
    check_structure({**doc, "sig": base64.b64encode(bytes(64)).decode()})
    kind = STANDARD.get(name)
    if kind is not None:
        kind.parse(check_args(doc["args"]))
    doc["sig"] = base64.b64encode(private_key.sign(signing_bytes(doc))).decode()
    payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandRejected(f"too_large: at most {MAX_PAYLOAD_BYTES} bytes")
    return payload


def load_private_key(path: str | Path, password: bytes | None = None) -> Ed25519PrivateKey:
    """The centre's signing key from a PEM file that no other user may read or write."""
    data = _read_key_file(Path(path), private=True)
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a usable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key; create one with generate_keypair")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The centre's public key for a box (``commands.public_key_file``), PEM."""
    data = _read_key_file(Path(path), private=False)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a usable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return key


def generate_keypair(directory: str | Path) -> tuple[Path, Path]:
    """Write a new ``centre.key`` (mode 0600) and ``centre.pub`` (0644) into ``directory``.

    Refuses to overwrite. Each file is written to a temporary name and linked into place, so a
    crash leaves no half key.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, pub_path = folder / "centre.key", folder / "centre.pub"
    for existing in (key_path, pub_path):
        if existing.exists():
            raise KeyFileError(f"{existing} already exists; move it away to make a new pair")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(key_path, private_pem, 0o600)
    _write_new(pub_path, public_pem, 0o644)
    return key_path, pub_path


def _read_key_file(path: Path, private: bool) -> bytes:
    try:
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())  # of the file opened, so no swap after the check
            mode = stat.S_IMODE(info.st_mode)
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(f"{path} is not a regular file")
            if private and mode & 0o077:
                raise KeyFileError(
                    f"{path} is open to other users (mode {mode:04o}) but holds the centre's"
                    f" private key, which signs commands for every school: run chmod 600 {path}"
                    " and consider the key exposed if others could read it"
                )
            return file.read(_KEY_FILE_MAX)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    except PermissionError:
        raise KeyFileError(f"{path}: permission denied; run as the key's owner") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise KeyFileError(f"{path}: cannot read the key file: {exc}") from None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        try:
            os.link(temp, path)  # atomic, and fails if someone made the file meanwhile
        except FileExistsError:
            raise KeyFileError(f"{path} already exists; move it away to make a new pair") from None
    finally:
        temp.unlink(missing_ok=True)
