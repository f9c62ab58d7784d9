"""Files the centre keeps as evidence: written once, verified, counted.

- :func:`write_once` makes a file atomically and durably under a name nothing has yet: it
  writes a temporary file, fsyncs it and links it into place, and ``link`` fails if the name
  exists. So neither a crash nor a second copy from a box ever replaces what was written.
- :func:`verify_clip`: the clip's hash chain and the box's signature (agent/video/chain.py).
- :func:`pin_box_key`: a box's public key, pinned at its first sight (or registered at install).
- :func:`disk_charge`: what a folder counts against a site's quota.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm

from agent.delivery.protocol import ChunkHeader
from agent.errors import ProtocolError
from agent.video.chain import Link, chain_problem, clip_statement, load_public_pem, signature_ok

MIN_FILE_CHARGE = 64 * 1024  # a file counts at least this much: inodes are finite too


def write_once(path: Path, data: bytes) -> bool:
    """Write a new file atomically and durably; False (and nothing written) if it exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_part_header(path: Path) -> ChunkHeader:
    """The header line the centre wrote at the start of a verified segment's part file."""
    with open(path, "rb") as f:
        return ChunkHeader(**json.loads(f.readline()))


def disk_charge(folder: Path) -> int:
    """What a site's folder counts against its quota: every file at least MIN_FILE_CHARGE."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += file_charge(os.stat(os.path.join(root, name)).st_size)
            except OSError:
                continue
    return total


def file_charge(size: int) -> int:
    return max(size, MIN_FILE_CHARGE)


def verify_clip(
    key_file: Path, site: str, event: str, camera: str, headers: list[ChunkHeader]
) -> str:
    """Why this clip cannot be trusted; "" when its chain and the box's signature hold."""
    problem = chain_problem([Link(h.sha256, h.prev, h.link) for h in headers])
    if problem:
        return problem
    if not key_file.exists():
        return f"no box key for site {site} in {key_file.parent}"
    statement = clip_statement(site, event, camera, headers[0].prev, headers[-1].link, len(headers))
    if not signature_ok(load_public_pem(key_file.read_bytes()), statement, headers[-1].sig):
        return "the box's signature does not match (forged, cut short or re-signed)"
    return ""


def pin_box_key(path: Path, pem: bytes) -> bool:
    """Keep ``pem`` as the site's key if it has none yet (True); a registered or earlier key
    is never replaced (False: the caller compares and reports)."""
    try:
        load_public_pem(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ProtocolError(f"not an Ed25519 public key ({type(exc).__name__})") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_once(path, pem)
