"""Recordings are tamper-evident: the receiver flags a clip altered, cut, reordered or forged.

The clip is real: synthetic H.264 through the real segmenter (which builds the hash chain), the
real segment store, and the box's chunker and signer. The attacker then edits the messages on
the way, keeping every header consistent with its (changed) data, as a capable one would.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from agent.centre.assembler import Assembler
from agent.centre.intake import Limits, Reporter
from agent.centre.ledger import Ledger
from agent.config import parse_config
from agent.delivery.framing import clip_chunks
from agent.delivery.outbox import BlobRef
from agent.delivery.protocol import BoxTopic, Topics
from agent.video.chain import BoxKey
from agent.video.clips import ClipSegment
from agent.video.pipeline import Video
from agent.video.store import SegmentStore
from tests.conftest import write_config
from tests.video_fixtures import synthetic_segments

SITE, EVENT, CAM = "sim-school", "f173ce1e-19ff-4a4e-ae9e-b5a1ec08ae09", "entrance-cam"
Msg = tuple[dict[str, Any], bytes]  # (chunk header, chunk bytes)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Msg], BoxKey]:
    tmp = tmp_path_factory.mktemp("box")
    key = BoxKey.load_or_create(tmp)
    cfg = parse_config(write_config(tmp / "agent.yaml", 1883, tmp / "state").read_text())
    video = Video(cfg, tmp, lambda _cs: None, key)
    store = SegmentStore(tmp / "spool", tmp / "spool.db", 10**9).open()
    segments = synthetic_segments(CAM, 4)
    msgs: list[Msg] = []
    for pos, s in enumerate(segments):
        ref = store.put(s, pins=[EVENT])
        cs = ClipSegment(EVENT, CAM, pos, pos == len(segments) - 1, ref, False, s.prev, s.link)
        for _prio, _topic, _key, head, blob in clip_chunks(
            Topics("schools", SITE), cs, sig=video.signature(cs)
        ):
            assert isinstance(blob, BlobRef)
            with open(blob.path, "rb") as f:
                f.seek(blob.offset)
                msgs.append((json.loads(head), f.read(blob.length)))
    return msgs, key


def _receiver(store: Path) -> tuple[Assembler, Ledger]:
    """The centre's video path, run on this thread: what the receiver's video thread does."""
    ledger = Ledger.open(store)
    return Assembler(
        store, "schools", ledger, Reporter(ledger, 0.0), Limits(), lambda _topic, _payload: None
    ), ledger


def _send(assembler: Assembler, kind: str, payload: bytes) -> None:
    assembler.take(BoxTopic(SITE, kind, CAM if kind == "clip" else ""), payload)
    assembler.drain()


def _deliver(store: Path, msgs: list[Msg], key: BoxKey) -> str | None:
    assembler, ledger = _receiver(store)
    _send(assembler, "pubkey", key.public_pem())
    for header, data in msgs:
        _send(assembler, "clip", json.dumps(header).encode() + b"\n" + data)
    return ledger.clip_problem(SITE, EVENT, CAM)


def _by_segment(msgs: list[Msg]) -> dict[int, list[Msg]]:
    out: dict[int, list[Msg]] = {}
    for h, d in msgs:
        out.setdefault(h["segment"], []).append((h, d))
    return out


def _renumber(groups: list[list[Msg]]) -> list[Msg]:
    """Positions 0..n-1 and the final flag as a consistent attacker would rewrite them."""
    out = []
    for pos, group in enumerate(groups):
        for h, d in group:
            out.append(({**h, "segment": pos, "final": pos == len(groups) - 1}, d))
    return out


def test_an_intact_clip_verifies(tmp_path: Path, clip: tuple[list[Msg], BoxKey]) -> None:
    msgs, key = clip
    assert _deliver(tmp_path, msgs, key) == ""
    verdict = json.loads((tmp_path / SITE / EVENT / f"{CAM}.verify.json").read_text())
    assert verdict == {"verified": True, "problem": "", "segments": 4}


def test_an_altered_segment_is_flagged(tmp_path: Path, clip: tuple[list[Msg], BoxKey]) -> None:
    msgs, key = clip
    groups = _by_segment(msgs)
    data = b"".join(d for _, d in groups[1])
    forged = data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:]
    sha = hashlib.sha256(forged).hexdigest()
    groups[1] = [
        ({**groups[1][0][0], "chunk": 0, "chunks": 1, "sha256": sha, "size": len(forged)}, forged)
    ]
    problem = _deliver(tmp_path, _renumber([groups[i] for i in range(4)]), key)
    assert problem and "segment 1 was altered" in problem


def test_a_removed_segment_is_flagged(tmp_path: Path, clip: tuple[list[Msg], BoxKey]) -> None:
    msgs, key = clip
    groups = _by_segment(msgs)
    problem = _deliver(tmp_path, _renumber([groups[0], groups[2], groups[3]]), key)
    assert problem and "missing or out of order" in problem


def test_reordered_segments_are_flagged(tmp_path: Path, clip: tuple[list[Msg], BoxKey]) -> None:
    msgs, key = clip
    groups = _by_segment(msgs)
    problem = _deliver(tmp_path, _renumber([groups[0], groups[2], groups[1], groups[3]]), key)
    assert problem and "missing or out of order" in problem


def test_a_clip_cut_short_fails_the_signature(
    tmp_path: Path, clip: tuple[list[Msg], BoxKey]
) -> None:
    msgs, key = clip
    groups = _by_segment(msgs)
    cut = _renumber([groups[0], groups[1]])
    cut = [({**h, "sig": groups[3][0][0]["sig"]}, d) if h["final"] else (h, d) for h, d in cut]
    problem = _deliver(tmp_path, cut, key)
    assert problem and "signature" in problem


def test_a_clip_signed_by_another_key_is_flagged_and_the_pinned_key_kept(
    tmp_path: Path, clip: tuple[list[Msg], BoxKey]
) -> None:
    msgs, key = clip
    (tmp_path / "impostor").mkdir()
    impostor = BoxKey.load_or_create(tmp_path / "impostor")
    assembler, ledger = _receiver(tmp_path / "centre")
    _send(assembler, "pubkey", key.public_pem())
    _send(assembler, "pubkey", impostor.public_pem())  # a swap is refused
    assert (tmp_path / "centre" / "keys" / f"{SITE}.pub").read_bytes() == key.public_pem()
    resigned = [
        ({**h, "sig": impostor.sign(b"anything")}, d) if h["final"] else (h, d) for h, d in msgs
    ]
    for h, d in resigned:
        _send(assembler, "clip", json.dumps(h).encode() + b"\n" + d)
    problem = ledger.clip_problem(SITE, EVENT, CAM)
    assert problem and "signature" in problem
