"""Pre/post-alarm clips: from the ring and from segments still to come, stored pinned to the
event, announced in order with the last one final, without blocking the alarm path."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from agent.video.camera import Camera
from agent.video.clips import ClipRecorder, ClipSegment
from agent.video.ring import RingBuffer
from agent.video.segmenter import Segment, Segmenter
from agent.video.sources.base import StreamInfo
from agent.video.sources.synthetic import SyntheticSource
from agent.video.store import SegmentStore
from tests.conftest import wait_for
from tests.video_fixtures import decode


def segment(index: int, start: float, duration: float = 2.0, camera: str = "cam") -> Segment:
    data = f"{camera}-{index}".encode() * 100
    digest = hashlib.sha256(data).hexdigest()
    return Segment(camera, index, start, start + duration, duration, data, digest, 1)


class Announced:
    """on_segment: collects ClipSegments, as the uplink would queue them."""

    def __init__(self) -> None:
        self.items: list[ClipSegment] = []
        self.lock = threading.Lock()

    def __call__(self, item: ClipSegment) -> None:
        with self.lock:
            self.items.append(item)

    def final(self, camera_id: str = "cam") -> ClipSegment | None:
        with self.lock:
            return next((i for i in self.items if i.final and i.camera_id == camera_id), None)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SegmentStore]:
    store = SegmentStore(tmp_path / "spool", tmp_path / "index.sqlite", 10**9).open()
    yield store
    store.close()


def recorder(
    rings: dict[str, RingBuffer], store: SegmentStore, grace_s: float = 10.0
) -> tuple[ClipRecorder, Announced]:
    announced = Announced()
    clips = ClipRecorder(rings, store, announced, grace_s=grace_s)
    clips.open()
    return clips, announced


def test_clip_covers_pre_and_post_within_one_segment(store: SegmentStore) -> None:
    ring = RingBuffer(keep_s=40.0)
    t0 = time.time() - 31.0
    for i in range(16):  # 32 s of history, the newest ending 1 s from now
        ring.add(segment(i, t0 + 2 * i))
    pressed_at = time.time() - 5.0
    clips, announced = recorder({"cam": ring}, store)
    clips.start("evt-1", pressed_at, ["cam"], pre_s=10.0, post_s=10.0)
    for i in range(16, 20):  # the camera goes on: post-alarm video
        ring.add(segment(i, t0 + 2 * i))
    final = wait_for(announced.final, 5, "final segment")
    clips.close()

    items = announced.items
    assert [i.position for i in items] == list(range(len(items)))
    assert [i.final for i in items] == [False] * (len(items) - 1) + [True]
    assert final.truncated is False and clips.active() == 0
    first, last = items[0].segment, items[-1].segment
    assert first.start <= pressed_at - 10.0 < first.end  # pre covered, within one segment
    assert last.start < pressed_at + 10.0 <= last.end  # post covered, within one segment
    indexes = [i.segment.index for i in items]
    assert indexes == list(range(indexes[0], indexes[0] + len(items)))
    for item in items:
        assert item.segment.path.exists() and store.pins(item.segment.path) == {"evt-1"}


def test_a_clip_from_a_real_camera_decodes_and_spans_the_window(store: SegmentStore) -> None:
    ring = RingBuffer(keep_s=2.0)
    source = SyntheticSource(width=160, height=96, fps=10, segment_s=0.5)
    segmenter = Segmenter("cam", 0.5, StreamInfo(160, 96, Fraction(10)), [ring.add])
    camera = Camera("cam", source, segmenter)
    camera.start()
    clips, announced = recorder({"cam": ring}, store)
    try:
        wait_for(lambda: len(ring.segments()) >= 3, 10, "1.5 s of pre-alarm video")
        pressed_at = time.time()
        clips.start("evt-2", pressed_at, ["cam"], pre_s=1.0, post_s=1.0)
        wait_for(announced.final, 10, "final segment")
    finally:
        clips.close()
        camera.stop()
    items = announced.items
    # Covered to within a frame (0.1 s): frames carry their capture time, so a source starved
    # of CPU leaves gaps between segments, and the window's edge fell in one on a loaded machine.
    assert items[0].segment.start <= pressed_at - 1.0 + 0.1
    assert items[-1].segment.end >= pressed_at + 1.0 - 0.1
    assert items[-1].segment.end - items[0].segment.start <= 2.0 + 2 * 0.5 + 0.2
    for item in items:
        frames, first_key, errors = decode(item.segment.path.read_bytes())
        assert frames == 5 and first_key and not errors


def test_a_camera_that_dies_gives_a_truncated_final_segment(store: SegmentStore) -> None:
    ring = RingBuffer(keep_s=10.0)
    now = time.time()
    for i in range(3):
        ring.add(segment(i, now - 6 + 2 * i))
    clips, announced = recorder({"cam": ring}, store, grace_s=0.3)
    clips.start("evt-3", now - 0.5, ["cam"], pre_s=4.0, post_s=1.0)  # wants video to now + 0.5
    started = time.monotonic()
    final = wait_for(announced.final, 5, "truncated final segment")
    clips.close()
    assert 0.6 < time.monotonic() - started < 2.5
    assert final.truncated and final.segment.index == 2
    assert [i.segment.index for i in announced.items] == [0, 1, 2]


def test_start_returns_at_once_even_when_the_disk_is_slow(tmp_path: Path) -> None:
    class SlowStore(SegmentStore):
        def put(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            time.sleep(0.05)  # an SD card having a bad day
            return super().put(*args, **kwargs)  # type: ignore[arg-type]

    store = SlowStore(tmp_path / "spool", tmp_path / "index.sqlite", 10**9).open()
    ring = RingBuffer(keep_s=40.0)
    now = time.time()
    for i in range(15):
        ring.add(segment(i, now - 30 + 2 * i))
    clips, announced = recorder({"cam": ring}, store)
    started = time.monotonic()
    clips.start("evt-4", now, ["cam"], pre_s=30.0, post_s=0.0)
    assert time.monotonic() - started < 0.05
    wait_for(announced.final, 10, "the clip, eventually")
    clips.close()
    assert len(announced.items) == 15


def test_two_alarms_share_segments_and_pin_them_both(store: SegmentStore) -> None:
    ring = RingBuffer(keep_s=40.0)
    now = time.time()
    for i in range(10):
        ring.add(segment(i, now - 20 + 2 * i))
    clips, announced = recorder({"cam": ring}, store)
    clips.start("evt-a", now - 4, ["cam"], pre_s=4.0, post_s=2.0)
    clips.start("evt-b", now - 2, ["cam"], pre_s=4.0, post_s=2.0)
    wait_for(lambda: len([i for i in announced.items if i.final]) == 2, 5, "both clips")
    clips.close()
    shared = {i.segment.path for i in announced.items if i.event_id == "evt-a"} & {
        i.segment.path for i in announced.items if i.event_id == "evt-b"
    }
    assert len(shared) >= 2
    for path in shared:
        assert store.pins(path) == {"evt-a", "evt-b"}
    assert len(store.refs()) == len({i.segment.path for i in announced.items})


def test_unknown_camera_is_skipped_and_others_still_record(
    store: SegmentStore, caplog: pytest.LogCaptureFixture
) -> None:
    ring = RingBuffer(keep_s=10.0)
    now = time.time()
    for i in range(4):
        ring.add(segment(i, now - 8 + 2 * i))
    clips, announced = recorder({"cam": ring}, store)
    clips.start("evt-5", now - 2, ["ghost", "cam"], pre_s=2.0, post_s=1.0)
    wait_for(announced.final, 5, "clip from the known camera")
    clips.close()
    assert "no camera 'ghost'" in caplog.text


def test_close_stores_open_clips_as_truncated(store: SegmentStore) -> None:
    ring = RingBuffer(keep_s=10.0)
    now = time.time()
    ring.add(segment(0, now - 2))
    clips, announced = recorder({"cam": ring}, store)
    clips.start("evt-6", now, ["cam"], pre_s=2.0, post_s=30.0)
    wait_for(lambda: clips.active() == 1, 2, "clip registered")
    clips.close()
    final = announced.final()
    assert final is not None and final.truncated and final.segment.path.exists()


def test_with_recording_off_no_video_touches_the_disk_until_an_alarm(tmp_path: Path) -> None:
    """Camera, segmenter and ring run; the storage directory is watched the whole time."""
    spool = tmp_path / "spool"
    store = SegmentStore(spool, tmp_path / "index.sqlite", 10**9).open()
    ring = RingBuffer(keep_s=2.0)
    segmenter = Segmenter("cam", 0.5, StreamInfo(160, 96, Fraction(10)), [ring.add])
    camera = Camera("cam", SyntheticSource(width=160, height=96, fps=10, segment_s=0.5), segmenter)
    clips, announced = recorder({"cam": ring}, store)
    camera.start()
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            seen.update(p.name for p in spool.iterdir())
            time.sleep(0.01)
        assert len(ring.segments()) >= 3 and seen == set()
        clips.start("evt-7", time.time(), ["cam"], pre_s=1.0, post_s=0.5)
        wait_for(announced.final, 10, "clip")
    finally:
        clips.close()
        camera.stop()
    assert {p.suffix for p in spool.iterdir()} == {".ts"}
