"""The segment store: atomic files, a durable index, eviction that spares pinned segments, and a
disk that fills up or turns read-only (a real tmpfs when running as root)."""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import StoreError
from agent.video.segmenter import Segment, Segmenter
from agent.video.sources.synthetic import SyntheticSource
from agent.video.store import Recorder, SegmentStore

REPO = Path(__file__).resolve().parent.parent


def segment(index: int, size: int = 1000, camera: str = "cam", start: float = 0.0) -> Segment:
    data = (index.to_bytes(4, "big") + camera.encode()) * (size // (4 + len(camera)) + 1)
    data = data[:size]
    start = start or 1_700_000_000.0 + 2 * index
    digest = hashlib.sha256(data).hexdigest()
    return Segment(camera, index, start, start + 2.0, 2.0, data, digest, 1)


def open_store(root: Path, budget: int = 10**9, retention_s: float | None = None) -> SegmentStore:
    store = SegmentStore(root / "video", root / "index.sqlite", budget, retention_s=retention_s)
    return store.open()


def video_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file())


def test_put_writes_the_file_and_indexes_it(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    ref = store.put(segment(7, size=5000), pins=["evt-1"])
    assert ref.path.read_bytes() == segment(7, size=5000).data
    assert ref.path.parent == tmp_path / "video" and ref.path.suffix == ".ts"
    assert (ref.bytes, ref.index, ref.sha256) == (5000, 7, segment(7, size=5000).sha256)
    assert video_files(tmp_path / "video") == [ref.path.name]  # no temp file left behind
    assert store.refs() == [ref] and store.pins(ref.path) == {"evt-1"}
    assert store.total_bytes == 5000 and store.bytes_written_today() == 5000
    store.close()

    db = sqlite3.connect(tmp_path / "index.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("SELECT camera, idx, kind FROM segments").fetchall() == [("cam", 7, "spool")]


def test_a_crash_mid_write_leaves_no_partial_file_under_a_final_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A child process writing a 4 MB segment slowly is SIGKILLed halfway through."""
    child = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        import agent.video.segfiles
        import agent.video.store
        from tests.test_store import open_store, segment
        real_write = os.write
        def slow_write(fd, data):
            time.sleep(0.005)
            return real_write(fd, data[:16384])
        agent.video.segfiles.os.write = slow_write
        store = open_store(agent.video.store.Path({str(tmp_path)!r}))
        print("writing", flush=True)
        store.put(segment(1, size=4_000_000))
        print("done", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    left = list((tmp_path / "video").iterdir())
    assert [p for p in left if not p.name.startswith(".")] == []  # nothing under a final name
    assert any(p.name.endswith(".tmp") and 0 < p.stat().st_size < 4_000_000 for p in left)

    store = open_store(tmp_path)
    assert video_files(tmp_path / "video") == [] and store.refs() == []
    assert "1 unfinished temp file(s)" in caplog.text


def test_open_removes_rows_whose_file_is_gone_and_files_without_a_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path)
    kept, lost = store.put(segment(1)), store.put(segment(2))
    store.close()
    lost.path.unlink()
    (tmp_path / "video" / "cam_20240101T000000.000Z_0123456789abcdef.ts").write_bytes(b"x")

    store = open_store(tmp_path)
    assert store.refs() == [kept] and store.total_bytes == kept.bytes
    assert video_files(tmp_path / "video") == [kept.path.name]
    assert "1 index row(s) whose file was gone and 1 file(s) with no index row" in caplog.text


def test_a_corrupt_index_is_moved_aside_and_the_store_starts_clean(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The promise above: a store that cannot open would stop every alarm clip after it."""
    store = open_store(tmp_path)
    store.put(segment(1))
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    (tmp_path / "index.sqlite").write_bytes(b"\x00" * 100 + b"torn" * 1000)

    store = open_store(tmp_path)
    assert list(tmp_path.glob("index.sqlite.corrupt-*"))
    assert "segment index" in caplog.text and "is corrupt" in caplog.text
    assert store.refs() == [] and video_files(tmp_path / "video") == []  # said so, in the log
    ref = store.put(segment(2), pins=["evt"])
    assert store.refs() == [ref] and store.pins(ref.path) == {"evt"}
    store.close()


def test_eviction_takes_the_oldest_unpinned_and_never_a_pinned_one(tmp_path: Path) -> None:
    store = open_store(tmp_path, budget=5000)
    refs = [store.put(segment(i), pins=["evt"] if i in (0, 3) else ()) for i in range(12)]
    kept = [r.index for r in store.refs()]
    assert kept == [0, 3, 9, 10, 11]  # the pinned two plus the newest that fit in 5000
    assert store.total_bytes == 5000
    assert {p.name for p in (tmp_path / "video").iterdir()} == {
        r.path.name for r in refs if r.index in kept
    }

    store.put(segment(12))
    assert [r.index for r in store.refs()] == [0, 3, 10, 11, 12]
    store.unpin(refs[0].path, "evt")  # delivered: it may go now, and it is the oldest
    store.put(segment(13))
    assert [r.index for r in store.refs()] == [3, 10, 11, 12, 13]


def test_over_budget_with_everything_pinned_keeps_it_all_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path, budget=2500)
    for i in range(4):
        store.put(segment(i), pins=[f"evt-{i}"])
    assert len(store.refs()) == 4
    assert caplog.text.count("pinned by events the centre has not received yet") == 1
    store.unpin_all("evt-0")
    store.unpin_all("evt-1")
    assert [r.index for r in store.refs()] == [2, 3]


def test_the_same_segment_twice_is_stored_once_with_both_pins(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    first = store.put(segment(5), pins=["evt-a"])
    second = store.put(segment(5), kind="recording", pins=["evt-b"])
    assert first == second and len(store.refs()) == 1
    assert store.pins(first.path) == {"evt-a", "evt-b"}
    assert store.pin(first.path, "evt-c") and store.pins(first.path) == {"evt-a", "evt-b", "evt-c"}
    assert not store.pin(tmp_path / "video" / "gone.ts", "evt-d")


def test_retention_removes_old_unpinned_segments(tmp_path: Path) -> None:
    store = open_store(tmp_path, retention_s=3600.0)
    now = time.time()
    store.put(segment(1, start=now - 7200), pins=["evt"])
    store.put(segment(2, start=now - 7200))
    store.put(segment(3, start=now - 60))
    assert [r.index for r in store.refs()] == [1, 3]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs: a disk that really fills up (and can be made read-only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_raises_store_error_and_leaves_nothing_behind(
    small_disk: Path, tmp_path: Path
) -> None:
    store = SegmentStore(small_disk, tmp_path / "index.sqlite", budget_bytes=10**9).open()
    store.put(segment(1, size=600_000))
    with pytest.raises(StoreError) as info:
        store.put(segment(2, size=600_000))
    assert info.value.errno == errno.ENOSPC and "disk is full" in str(info.value)
    assert isinstance(info.value, OSError)
    assert video_files(small_disk) == [store.refs()[0].path.name]  # no temp, no partial

    Recorder(store)(segment(3, size=600_000))  # the recording sink logs it and goes on
    assert store.put(segment(4, size=300_000)).path.exists()  # the failed write freed its space


def test_a_read_only_disk_raises_store_error_with_advice(small_disk: Path, tmp_path: Path) -> None:
    store = SegmentStore(small_disk, tmp_path / "index.sqlite", budget_bytes=10**9).open()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(StoreError) as info:
        store.put(segment(1))
    assert info.value.errno == errno.EROFS and "replace the card" in str(info.value)


def test_recorder_survives_store_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(tmp_path)
    store.close()  # every put now fails
    recorder = Recorder(store)
    for i in range(3):
        recorder(segment(i))
    assert caplog.text.count("recording stopped") == 1


def test_ten_minutes_of_recording_hold_the_quota_and_keep_pinned_segments(tmp_path: Path) -> None:
    """Continuous recording of 10 min of (simulated) video into a 1 MB quota, with an alarm's
    segments pinned early on: the quota holds, the pinned segments stay, the index matches."""
    budget = 1_000_000
    store = open_store(tmp_path, budget=budget, retention_s=24 * 3600.0)
    pinned: list[str] = []

    def alarm(seg: Segment) -> None:
        if 10 <= seg.index <= 12:
            pinned.append(store.put(seg, pins=["evt-early"]).path.name)

    source = SyntheticSource(width=160, height=96, fps=10, bitrate_kbps=200, realtime=False)
    info = source.open(5.0)
    segmenter = Segmenter("cam", 2.0, info, [Recorder(store), alarm])
    written = 0
    for pkt in source.packets():
        if pkt.pts >= 600:
            break
        segmenter.packet(pkt)
        written += len(pkt.data)
        assert store.total_bytes <= budget + 3 * 100_000  # the pinned three on top
    source.close()
    segmenter.flush()

    refs = store.refs()
    assert written > 5 * budget and len(pinned) == 3  # the quota turned over five times and more
    assert {r.path.name for r in refs} == set(video_files(tmp_path / "video"))
    assert set(pinned) <= {r.path.name for r in refs}
    unpinned = sum(r.bytes for r in refs if r.path.name not in pinned)
    assert unpinned <= budget and refs[-1].index == 299
    assert store.bytes_written_today() >= written
