"""Video path cost: CPU and memory to ingest, segment and store H.264, against ffmpeg.

    .venv/bin/python -m bench.video             # markdown on stdout (~1 min, +30 s the first time)
    .venv/bin/python -m bench.video --runs 5 --json

What is measured, each in its own child process, its CPU (user + sys) and peak RSS read from
``os.wait4`` (that child alone, not the bench):

    agent     python -m bench.video --child pipeline: the file source (demux, AVCC -> Annex-B,
              access units), the Segmenter (MPEG-TS mux per segment, SHA-256) and a SegmentStore
              (temp file, fsync, rename, directory fsync, SQLite index with synchronous=FULL),
              unpaced. Interpreter start-up and imports are included; the pipeline alone is
              also reported (process_time around the loop).
    ffmpeg    ffmpeg -c copy -f segment -segment_format mpegts on the same input, same run: the
              floor for "copy packets into 2 s TS files".
    memory    python -m bench.video --child rings N: N cameras (Camera threads on the same
              file, looped and unpaced), each Segmenter feeding a 30 s RingBuffer, run until
              every ring is full and has turned over; the peak RSS of that process.

The input is one minute of 1080p25 H.264 at 4 Mbit/s with a keyframe every 2 s (what a camera
set up per docs/video.md sends), made once with ffmpeg's libx264 into ``bench/out`` (ignored by
git). Noise is added to the test pattern so the encoder really spends its 4 Mbit/s.

Runs are interleaved (agent, ffmpeg, agent, ...) so both see the same machine noise; the table
gives medians and the CPU ratio. Bounded: every child has a timeout. Run from the repo root
(the children are ``python -m bench.video`` too).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

CACHE = Path(__file__).resolve().parent / "out"
INPUT = "1080p25-4M-60s.mp4"
CHILD_TIMEOUT_S = 300
RING_S = 30.0
# glibc raises its mmap threshold each time a large block is freed, after which the ~1 MB
# segments come from the heap and fragment it; a fixed threshold returns them to the system.
MMAP_FIXED = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class Usage:
    cpu_s: float
    peak_rss_mb: float
    detail: dict[str, float]


def make_input(cache: Path) -> Path:
    """One minute of 1080p25 at 4 Mbit/s, keyframe every 2 s, made once (about 30 s)."""
    path = cache / INPUT
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=25,noise=alls=10:allf=t",
            "-t", "60", "-c:v", "libx264", "-preset", "veryfast",
            "-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M",
            "-g", "50", "-keyint_min", "50", "-sc_threshold", "0", "-bf", "0",
            "-pix_fmt", "yuv420p", str(tmp),
        ],
        check=True, timeout=CHILD_TIMEOUT_S,
    )  # fmt: skip
    tmp.rename(path)
    return path


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Usage:
    """Runs ``cmd`` and reads that child's own rusage; its stdout may carry JSON details."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        timer = threading.Timer(CHILD_TIMEOUT_S, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}): {stderr[-2000:]}")
        out.seek(0)
        text = out.read().strip()
    detail = json.loads(text) if text.startswith("{") else {}
    cpu = usage.ru_utime + usage.ru_stime
    return Usage(cpu, usage.ru_maxrss / 1024, detail)  # Linux: ru_maxrss is in KiB


def run_agent(src: Path, work: Path) -> Usage:
    out = work / "agent"
    shutil.rmtree(out, ignore_errors=True)
    return measure([sys.executable, "-m", "bench.video", "--child", "pipeline", str(src), str(out)])


def run_ffmpeg(src: Path, work: Path) -> Usage:
    out = work / "ffmpeg"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return measure(
        [
            "ffmpeg", "-v", "error", "-nostdin", "-i", str(src), "-c", "copy", "-map", "0:v",
            "-f", "segment", "-segment_time", "2", "-segment_format", "mpegts",
            str(out / "%05d.ts"),
        ]
    )  # fmt: skip


def run_rings(src: Path, cameras: int, env: dict[str, str] | None = None) -> Usage:
    return measure(
        [sys.executable, "-m", "bench.video", "--child", "rings", str(src), str(cameras)], env
    )


# --- children -----------------------------------------------------------------------------------


def child_pipeline(src: Path, out: Path) -> None:
    from agent.video.segmenter import Segmenter
    from agent.video.sources.demux import DemuxSource
    from agent.video.store import Recorder, SegmentStore

    started = time.process_time()
    store = SegmentStore(out, out.parent / "agent-index.sqlite", 10**12).open()
    source = DemuxSource(str(src), pace="simulated")
    segmenter = Segmenter("bench", 2.0, source.open(5.0), [Recorder(store)])
    for packet in source.packets():
        segmenter.packet(packet)
    segmenter.flush()
    source.close()
    segments = len(store.refs())
    store.close()
    print(json.dumps({"pipeline_cpu_s": time.process_time() - started, "segments": segments}))


def child_rings(src: Path, cameras: int) -> None:
    from agent.video.camera import Camera
    from agent.video.ring import RingBuffer
    from agent.video.segmenter import Segment, Segmenter
    from agent.video.sources.base import StreamInfo
    from agent.video.sources.demux import DemuxSource

    rings = [RingBuffer(keep_s=RING_S) for _ in range(cameras)]
    counts = [0] * cameras
    setups = []
    for i, ring in enumerate(rings):

        def sink(segment: Segment, i: int = i, ring: RingBuffer = ring) -> None:
            ring.add(segment)
            counts[i] += 1

        info = StreamInfo(1920, 1080, Fraction(25))
        segmenter = Segmenter(f"cam{i}", 2.0, info, [sink])
        source = DemuxSource(str(src), pace="simulated", loop=True)
        setups.append(Camera(f"cam{i}", source, segmenter))
    for camera in setups:
        camera.start()
    deadline = time.monotonic() + CHILD_TIMEOUT_S - 30
    while time.monotonic() < deadline and min(counts) < (RING_S + 16) / 2:  # full, and turned over
        time.sleep(0.1)
    held = sum(ring.nbytes for ring in rings)
    for camera in setups:
        camera.stop()
    print(json.dumps({"ring_mb": held / 2**20, "segments_min": min(counts)}))


# --- report -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="agent/ffmpeg pairs (median)")
    parser.add_argument("--cameras", default="1,4,8", help="camera counts for the memory test")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--input", type=Path, help="another H.264 file instead of the 1080p one")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "pipeline":
            child_pipeline(Path(rest[0]), Path(rest[1]))
        else:
            child_rings(Path(rest[0]), int(rest[1]))
        return

    src = args.input or make_input(args.cache)
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        work = Path(tmp)
        pairs = [(run_agent(src, work), run_ffmpeg(src, work)) for _ in range(args.runs)]
    counts = [int(c) for c in args.cameras.split(",")]
    rings = {n: run_rings(src, n) for n in counts}
    tuned = {n: run_rings(src, n, MMAP_FIXED) for n in counts}
    report(pairs, rings, tuned, args.json)


def report(
    pairs: list[tuple[Usage, Usage]],
    rings: dict[int, Usage],
    tuned: dict[int, Usage],
    as_json: bool,
) -> None:
    agent_cpu = statistics.median(a.cpu_s for a, _ in pairs)
    ffmpeg_cpu = statistics.median(f.cpu_s for _, f in pairs)
    pipeline_cpu = statistics.median(a.detail["pipeline_cpu_s"] for a, _ in pairs)
    figures = {
        "agent_cpu_s": agent_cpu,
        "agent_pipeline_cpu_s": pipeline_cpu,
        "ffmpeg_cpu_s": ffmpeg_cpu,
        "cpu_ratio": agent_cpu / ffmpeg_cpu,
        "pipeline_cpu_ratio": pipeline_cpu / ffmpeg_cpu,
        "agent_peak_rss_mb": max(a.peak_rss_mb for a, _ in pairs),
        "ffmpeg_peak_rss_mb": max(f.peak_rss_mb for _, f in pairs),
        "rings": {n: asdict(u) for n, u in rings.items()},
        "rings_mmap_threshold_fixed": {n: asdict(u) for n, u in tuned.items()},
        "runs": len(pairs),
    }
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    print(f"Median of {len(pairs)} runs\n")
    print("| | CPU s | peak RSS MB |\n|---|---:|---:|")
    print(f"| agent (whole process) | {agent_cpu:.2f} | {figures['agent_peak_rss_mb']:.0f} |")
    print(f"| agent (pipeline only) | {pipeline_cpu:.2f} | |")
    print(f"| ffmpeg -c copy -f segment | {ffmpeg_cpu:.2f} | {figures['ffmpeg_peak_rss_mb']:.0f} |")
    print(
        f"| ratio agent / ffmpeg | {figures['cpu_ratio']:.2f}x "
        f"(pipeline {figures['pipeline_cpu_ratio']:.2f}x) | |\n"
    )
    print(f"Cameras each with a full {RING_S:.0f} s pre-alarm ring\n")
    print(
        "| cameras | video held in rings MB | peak RSS MB | peak RSS MB, "
        "MALLOC_MMAP_THRESHOLD_=131072 |\n|---:|---:|---:|---:|"
    )
    for n, usage in rings.items():
        held, fixed = usage.detail["ring_mb"], tuned[n].peak_rss_mb
        print(f"| {n} | {held:.0f} | {usage.peak_rss_mb:.0f} | {fixed:.0f} |")


if __name__ == "__main__":
    main()
