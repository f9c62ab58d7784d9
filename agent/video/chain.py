"""Tamper-evident recordings: a hash chain over each camera's segments, signed by the box.

Each segment's ``link`` is ``sha256(prev_link || sha256(segment))``, starting from ``GENESIS``
when the camera starts. A clip carries every segment's ``prev`` and ``link``, and its last
segment carries the box's Ed25519 signature over (site, event, camera, first prev, last link,
count). So the centre can tell, from the clip alone:

- a segment altered (its link no longer follows from its prev and its bytes),
- a segment removed or the order changed (a prev that is not the previous link),
- the clip made up or cut short by someone without the box's key (the signature).

The box's key lives in the storage directory (0600), made on first start; its public key is
published retained on ``…/pubkey`` and should also be registered with the centre at install
(``STORE/keys/{site}.pub``), since a key first learnt over the network is trusted on first use.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import AgentError

GENESIS = "00" * 32
KEY_FILE = "box.key"


def next_link(prev: str, sha256: str) -> str:
    return hashlib.sha256(bytes.fromhex(prev) + bytes.fromhex(sha256)).hexdigest()


def clip_statement(
    site_id: str, event_id: str, camera_id: str, first_prev: str, last_link: str, count: int
) -> bytes:
    body = [site_id, event_id, camera_id, first_prev, last_link, count]
    return b"edge-agent/clip/v1\n" + json.dumps(body, separators=(",", ":")).encode()


def head_statement(site_id: str, camera_id: str, index: int, link: str, at: str) -> bytes:
    body = [site_id, camera_id, index, link, at]
    return b"edge-agent/chain-head/v1\n" + json.dumps(body, separators=(",", ":")).encode()


class BoxKey:
    """The box's signing key. Open with :meth:`load_or_create`."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, storage: Path) -> BoxKey:
        path = storage / KEY_FILE
        try:
            if path.exists():
                if path.stat().st_mode & 0o077:
                    raise AgentError(f"{path} is readable by others: chmod 600 {path}")
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
                if not isinstance(key, Ed25519PrivateKey):
                    raise AgentError(f"{path} is not an Ed25519 key")
                return cls(key)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            return cls(key)
        except (OSError, ValueError) as exc:
            raise AgentError(f"cannot load or create the box key {path}: {exc}") from exc

    def sign(self, statement: bytes) -> str:
        return base64.b64encode(self._key.sign(statement)).decode()

    def public_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def load_public_pem(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def signature_ok(public: Ed25519PublicKey, statement: bytes, sig: str) -> bool:
    try:
        public.verify(base64.b64decode(sig, validate=True), statement)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Link:
    sha256: str
    prev: str
    link: str


def chain_problem(links: Sequence[Link]) -> str:
    """Why these consecutive segments do not form an unbroken chain; "" when they do."""
    for i, seg in enumerate(links):
        if next_link(seg.prev, seg.sha256) != seg.link:
            return f"segment {i} was altered (its link does not match its content)"
        if i and seg.prev != links[i - 1].link:
            return f"a segment is missing or out of order before segment {i}"
    return ""
