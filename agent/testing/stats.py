"""Figures for the benches and the fault tests: percentiles and the machine they came from.

Benchmarks here are ratios against a baseline measured in the same run on a shared, noisy
machine, so every report carries the context that makes it comparable: the CPU, the load, the
filesystem the fsync went to, and the commit measured.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parents[2]


def percentile(sorted_xs: list[float], p: float) -> float:
    """Nearest-rank: the smallest sample with at least p % of the samples at or below it."""
    return sorted_xs[max(0, math.ceil(p / 100 * len(sorted_xs)) - 1)]


def describe(xs: list[float]) -> dict[str, float]:
    """Seconds in, milliseconds out."""
    s = sorted(xs)
    return {"n": len(s), "p50_ms": percentile(s, 50) * 1e3, "p99_ms": percentile(s, 99) * 1e3,
            "max_ms": s[-1] * 1e3, "mean_ms": sum(s) / len(s) * 1e3}


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
        first = subprocess.run([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"],
                               capture_output=True, text=True, timeout=5).stdout.splitlines()
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
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "agent"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
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
        if cand.is_dir() and os.access(cand, os.W_OK) and fs_type(cand)[0] not in (
                "tmpfs", "ramfs"):
            return cand
    return Path(tempfile.gettempdir())
