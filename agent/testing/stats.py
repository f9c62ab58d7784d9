"""Figures for the benches and the fault tests: percentiles, stages, the median of several
runs, the machine they came from.

Benchmarks here are ratios against a baseline measured in the same run on a shared, noisy
machine, so every report carries the context that makes it comparable: the CPU, the load, the
filesystem the fsync went to, and the commit measured. Where the time goes inside the agent
comes from its tracing points (agent/tracing.py) through a :class:`Stopwatch`.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.tracing import Point

REPO = Path(__file__).resolve().parents[2]


def percentile(sorted_xs: list[float], p: float) -> float:
    """Nearest-rank: the smallest sample with at least p % of the samples at or below it."""
    return sorted_xs[max(0, math.ceil(p / 100 * len(sorted_xs)) - 1)]


def describe(xs: list[float]) -> dict[str, float]:
    """Seconds in, milliseconds out."""
    s = sorted(xs)
    return {
        "n": len(s),
        "p50_ms": percentile(s, 50) * 1e3,
        "p99_ms": percentile(s, 99) * 1e3,
        "max_ms": s[-1] * 1e3,
        "mean_ms": sum(s) / len(s) * 1e3,
    }


def ratios(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    """``a`` over ``b`` at p50 and p99 (two ``describe`` results)."""
    return {"p50": a["p50_ms"] / b["p50_ms"], "p99": a["p99_ms"] / b["p99_ms"]}


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the runs' median (of an even number, the lower middle one: a
    run that happened, with its other figures), and as ``runs_<key>`` every run's ``key``."""
    median = statistics.median_low(r[key] for r in runs)
    return {**next(r for r in runs if r[key] == median), f"runs_{key}": [r[key] for r in runs]}


def table(
    rows: Mapping[str, Mapping[str, float]], head: str = "path", mean: bool = True, digits: int = 3
) -> list[str]:
    """A markdown table of ``describe`` results, one row each: p50, p99, max (and mean)."""
    cols = ["p50_ms", "p99_ms", "max_ms", *(["mean_ms"] if mean else [])]
    out = [
        f"| {head} | n | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for label, f in rows.items():
        cells = " | ".join(f"{f[c]:.{digits}f}" for c in cols)
        out.append(f"| {label} | {f['n']:.0f} | {cells} |")
    return out


def machine_line(ctx: Mapping[str, Any]) -> str:
    la = ctx["loadavg"]
    end = ctx.get("loadavg_end")
    return (
        f"Machine: {ctx['cpus']} CPUs ({ctx['cpus_usable']} usable) {ctx['cpu_model']}; "
        f"Linux {ctx['kernel']}; Python {ctx['python']}; SQLite {ctx['sqlite']}; paho "
        f"{ctx['paho']}; {ctx['broker']}. Agent code: {ctx['agent_code']}. Storage: "
        f"{ctx['storage_dir']} on {ctx['storage_fs']} ({ctx['storage_device']}). Load "
        f"average {la[0]:.2f} at start" + (f", {end[0]:.2f} at end." if end else ".")
    )


class Stopwatch:
    """A tracer (agent/tracing.py) for one measurement at a time.

    :meth:`arm` starts a row at t0; every point crossed (and every :meth:`mark` of the bench's
    own) until :meth:`take` is kept with its perf_counter() times. A span is from a point's
    first crossing to the next crossing of another (:func:`span`), so a point that fires for
    other reasons too (the uplink wakes for a status as well) does not shift the figure.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()  # guards _row; held only to copy or append
        self._row: dict[str, list[float]] | None = None

    def arm(self, t0: float) -> None:
        with self._cond:
            self._row = {"t0": [t0]}

    def __call__(self, point: Point, key: str) -> None:
        self.mark(point)

    def mark(self, name: str, at: float | None = None) -> None:
        at = time.perf_counter() if at is None else at
        with self._cond:
            if self._row is not None:
                self._row.setdefault(name, []).append(at)
                self._cond.notify_all()

    def wait(self, name: str, timeout: float) -> bool:
        """Until ``name`` has been crossed in this row."""
        with self._cond:
            return self._cond.wait_for(lambda: name in (self._row or {}), timeout)

    def take(self) -> dict[str, list[float]]:
        with self._cond:
            row, self._row = self._row or {}, None
            return row


def span(row: Mapping[str, list[float]], a: str, b: str) -> float | None:
    """From ``a``'s first time to ``b``'s first time at or after it; if ``b`` came only
    before, to its first time (negative: a subscriber can have a message before paho's
    publish() has returned on the sender's thread). None if either is missing."""
    if not row.get(a) or not row.get(b):
        return None
    start = row[a][0]
    later = [t for t in row[b] if t >= start]
    return (later[0] if later else row[b][0]) - start


def stages(
    rows: list[dict[str, list[float]]], spans: Mapping[str, tuple[str, str]]
) -> dict[str, dict[str, float]]:
    """``describe`` of each labelled span over the rows that have it."""
    out = {}
    for label, (a, b) in spans.items():
        xs = [x for r in rows if (x := span(r, a, b)) is not None]
        if xs:
            out[label] = describe(xs)
    return out


def fs_type(path: Path) -> tuple[str, str, str]:
    """(filesystem type, device, mount point) of the mount holding ``path``, from /proc/mounts."""
    real = os.path.realpath(path)
    best = ("unknown", "unknown", "")
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        dev, mnt, kind = parts[0], parts[1].replace("\\040", " "), parts[2]
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best[2]):
            best = (kind, dev, mnt)
    return best


def machine_context(storage: Path) -> dict[str, Any]:
    kind, dev, mnt = fs_type(storage)
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        first = subprocess.run(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.splitlines()
        broker = first[0] if first else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        broker = "unknown"
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "sqlite": sqlite3.sqlite_version,
        "paho": getattr(mqtt, "__version__", "") or _dist_version("paho-mqtt"),
        "broker": broker,
        "storage_dir": str(storage),
        "storage_fs": kind,
        "storage_device": dev,
        "storage_mount": mnt,
        "switch_interval_ms": sys.getswitchinterval() * 1e3,
        "agent_code": _agent_revision(),
    }


def _agent_revision() -> str:
    """The commit measured, and whether agent/ had uncommitted edits (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "agent"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted agent/ edits' if dirty else ''}"


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def default_storage_parent() -> Path:
    """The temp dir if it is on a real disk, else /var/tmp: the fsync must reach a device."""
    for cand in (Path(tempfile.gettempdir()), Path("/var/tmp"), Path.cwd()):
        if (
            cand.is_dir()
            and os.access(cand, os.W_OK)
            and fs_type(cand)[0] not in ("tmpfs", "ramfs")
        ):
            return cand
    return Path(tempfile.gettempdir())
