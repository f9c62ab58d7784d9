"""The centre's video path on its own (no broker): clips rebuilt and written once, and every
structure a box can grow held to its bound, with a report when something is dropped."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from agent.centre.assembler import Assembler
from agent.centre.holdings import CHUNK_OVERHEAD
from agent.centre.intake import Limits, MiB, Reporter
from agent.centre.ledger import Ledger
from agent.delivery.protocol import BoxTopic
from agent.video.chain import BoxKey
from tests.boxmsgs import signed_chunks

SITE, CAM = "school-042", "hall-cam"


def clip_chunks(
    key: BoxKey,
    event: str,
    segments: list[bytes],
    chunk: int = 1000,
    camera: str = CAM,
    live: bool = False,
) -> list[bytes]:
    return signed_chunks(key, SITE, event, segments, camera, chunk, live)


class Video:
    """An Assembler on a real ledger and store, run on the test's thread."""

    def __init__(self, store: Path, limits: Limits | None = None) -> None:
        self.store = store
        self.ledger = Ledger.open(store)
        self.sent: list[bytes] = []
        self.assembler = Assembler(
            store,
            "schools",
            self.ledger,
            Reporter(self.ledger, 0.0),
            limits or Limits(min_free_bytes=0),
            lambda _t, p: self.sent.append(p),
        )

    def send(
        self, payloads: list[bytes], kind: str = "clip", camera: str = CAM, site: str = SITE
    ) -> None:
        for payload in payloads:
            self.assembler.take(BoxTopic(site, kind, camera if kind != "pubkey" else ""), payload)
            self.assembler.drain()

    def receipts(self) -> list[tuple[str, str]]:
        return [(c["event_id"], c["camera_id"]) for p in self.sent for c in json.loads(p)["clips"]]

    def reports(self, what: str) -> list[str]:
        return [r.detail for r in self.ledger.reports(newest=1000) if r.what == what]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> BoxKey:
    return BoxKey.load_or_create(tmp_path_factory.mktemp("box"))


@pytest.fixture
def video(tmp_path: Path, key: BoxKey) -> Video:
    v = Video(tmp_path / "centre")
    v.send([key.public_pem()], kind="pubkey")
    return v


def test_a_clip_arriving_in_any_order_is_written_verified_and_confirmed(
    video: Video, key: BoxKey
) -> None:
    event = str(uuid.uuid4())
    chunks = clip_chunks(key, event, [os.urandom(2500), os.urandom(1800), os.urandom(900)])
    video.send(list(reversed(chunks)) + chunks[:2])  # any order, and duplicates
    clip = video.store / SITE / event / f"{CAM}.ts"
    assert json.loads(clip.with_name(f"{CAM}.verify.json").read_text())["verified"] is True
    assert video.ledger.clip_problem(SITE, event, CAM) == ""
    assert video.receipts() == [(event, CAM)]
    assert not (video.store / SITE / ".partial" / event).exists()
    assert video.assembler.held == 0


def test_a_second_different_copy_is_refused_even_after_a_restart(
    tmp_path: Path, key: BoxKey
) -> None:
    """Issue 10.4: "already written" was only in memory; a restart let a box replace evidence."""
    event = str(uuid.uuid4())
    first = Video(tmp_path)
    first.send([key.public_pem()], kind="pubkey")
    first.send(clip_chunks(key, event, [b"original evidence" * 100]))
    clip = tmp_path / SITE / event / f"{CAM}.ts"
    before = clip.read_bytes()
    first.ledger.close()

    again = Video(tmp_path)  # the receiver restarted
    again.send(clip_chunks(key, event, [b"original evidence" * 100]))  # the same: confirmed
    again.send(clip_chunks(key, event, [b"replaced evidence" * 100]))  # different: refused
    assert clip.read_bytes() == before
    assert again.receipts() == [(event, CAM)]
    assert again.reports("second_copy")
    assert again.ledger.clip_problem(SITE, event, CAM) == ""


def test_a_copy_that_beat_the_ledger_is_not_replaced(video: Video, key: BoxKey) -> None:
    """A crash after the clip file was linked but before its ledger row: a different copy that
    completes later finds the file and is refused."""
    event = str(uuid.uuid4())
    clip = video.store / SITE / event / f"{CAM}.ts"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(b"the first copy")
    video.send(clip_chunks(key, event, [b"a later copy" * 50]))
    assert clip.read_bytes() == b"the first copy"
    assert video.reports("second_copy") and video.receipts() == []


def test_never_completing_segments_stay_within_the_sites_memory(
    tmp_path: Path, key: BoxKey
) -> None:
    """Issue 10.3: chunks of segments that never complete were kept forever."""
    limits = Limits(
        assembly_site_bytes=1 * MiB, assembly_bytes=2 * MiB, min_free_bytes=0, open_clips_site=1000
    )
    video = Video(tmp_path, limits)
    for _ in range(50):  # 50 clips x 100 KB of a 200 KB segment that never completes
        event = str(uuid.uuid4())
        video.send(clip_chunks(key, event, [os.urandom(200_000)], chunk=10_000)[:10])
        assert video.assembler.held <= limits.assembly_site_bytes + 10_000 + CHUNK_OVERHEAD
    assert video.reports("evicted")
    honest = str(uuid.uuid4())  # another site is not pushed out: it has its own share
    video.send(clip_chunks(key, honest, [os.urandom(50_000)]), site="school-001")
    assert video.ledger.clip_problem("school-001", honest, CAM) is not None


def test_open_clips_and_live_sessions_are_capped(tmp_path: Path, key: BoxKey) -> None:
    video = Video(tmp_path, Limits(open_clips_site=2, live_sessions_site=1, min_free_bytes=0))
    for _ in range(5):
        video.send(clip_chunks(key, str(uuid.uuid4()), [b"x" * 3000])[:1])
    assert len(video.reports("evicted")) == 3
    for _ in range(3):
        video.send(
            clip_chunks(key, f"live-{uuid.uuid4()}", [b"y" * 3000], live=True)[:1], kind="live"
        )
    assert len(video.reports("evicted")) == 5


def test_an_idle_live_session_is_closed(tmp_path: Path, key: BoxKey) -> None:
    video = Video(tmp_path, Limits(live_idle_s=10, min_free_bytes=0))
    video.send(clip_chunks(key, "always", [b"z" * 3000], live=True)[:1], kind="live")
    assert video.assembler.held > 0
    video.assembler.sweep(now=time.monotonic() + 11)
    assert video.assembler.held == 0


def test_a_site_over_its_disk_quota_is_refused(tmp_path: Path, key: BoxKey) -> None:
    video = Video(tmp_path, Limits(site_quota_bytes=200_000, min_free_bytes=0))
    video.send([key.public_pem()], kind="pubkey")
    events = [str(uuid.uuid4()) for _ in range(3)]
    for event in events:  # each segment file counts at least 64 KB
        video.send(clip_chunks(key, event, [b"v" * 100]))
    written = [e for e in events if (tmp_path / SITE / e / f"{CAM}.ts").exists()]
    assert len(written) == 1 and video.reports("over_quota")


def test_partial_clips_are_removed_after_their_time(tmp_path: Path, key: BoxKey) -> None:
    video = Video(tmp_path, Limits(partial_ttl_s=60, min_free_bytes=0))
    event = str(uuid.uuid4())
    video.send(clip_chunks(key, event, [b"a" * 2000, b"b" * 2000])[:2])  # segment 0 of 2
    partial = tmp_path / SITE / ".partial" / event / CAM
    assert (partial / "00000.seg").exists()
    os.utime(partial, (time.time() - 120, time.time() - 120))
    video.assembler.sweep()
    assert not partial.exists() and video.reports("expired")


def test_a_clip_comes_back_from_disk_after_a_restart(tmp_path: Path, key: BoxKey) -> None:
    event = str(uuid.uuid4())
    chunks = clip_chunks(key, event, [b"a" * 2000, b"b" * 2000, b"c" * 500])
    first = Video(tmp_path)
    first.send([key.public_pem()], kind="pubkey")
    first.send(chunks[:4])  # segments 0 and 1 verified, on disk
    again = Video(tmp_path)
    again.send(chunks[4:])
    assert again.ledger.clip_problem(SITE, event, CAM) == ""
    assert (
        tmp_path / SITE / event / f"{CAM}.ts"
    ).read_bytes() == b"a" * 2000 + b"b" * 2000 + b"c" * 500


def test_a_swapped_box_key_is_refused_and_reported(video: Video, tmp_path: Path) -> None:
    impostor = BoxKey.load_or_create(tmp_path)
    video.send([impostor.public_pem()], kind="pubkey")
    assert video.reports("key_changed")
    video.send([b"-----BEGIN PUBLIC KEY-----\nnot a key\n"], kind="pubkey")
    assert video.reports("refused")
