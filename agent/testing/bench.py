"""What every bench does around its measurement: the options they share, a work dir on a real
disk, a failed step reported as such, and the figures printed as markdown or JSON.

Each bench (bench/) is a module whose ``main`` is ``arguments`` for its own options and
``run`` for the rest, so that these chores read, and fail, alike in every bench:

- the work dir is made under ``--storage-dir``, by default the temp dir if it is a real disk
  (else /var/tmp): an fsync on tmpfs costs nothing, so a bench that measured one there would
  report the wrong machine; it warns if told to use one;
- a wait that timed out (``AssertionError``, which agent/testing raises) ends the bench with
  exit status 1 and one line naming the step; the work dir is kept then, for its logs;
- the result is printed as the bench's markdown, or as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agent.testing.site import agent_logs_to
from agent.testing.stats import default_storage_parent, fs_type

R = TypeVar("R")


def arguments(
    doc: str | None, *, storage: bool = True, budget_s: float | None = None
) -> argparse.ArgumentParser:
    """``--json``; with ``storage``, ``--storage-dir`` and ``--keep``; with ``budget_s``,
    ``--budget-s`` (its default). The bench adds its own; the help shows each default."""
    ap = argparse.ArgumentParser(
        description=(doc or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    if storage:
        ap.add_argument(
            "--storage-dir",
            type=Path,
            default=None,
            help="parent of the work dir; a real disk, not tmpfs (None: the temp dir, or "
            "/var/tmp if that is tmpfs)",
        )
        ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases)")
    if budget_s is not None:
        ap.add_argument(
            "--budget-s",
            type=float,
            default=budget_s,
            help="stop measuring after this long and report what was measured",
        )
    return ap


def run(
    name: str,
    args: argparse.Namespace,
    measure: Callable[[Path], R],
    markdown: Callable[[R], str],
    *,
    agent_log: bool = False,
    keep: Callable[[R], bool] = lambda _result: False,
    errors: tuple[type[BaseException], ...] = (AssertionError,),
) -> int:
    """``measure`` in a fresh work dir, then its result printed; the exit status.

    ``agent_log``: the agent's log set-up (agent/logs.py) for an agent in this process, its
    lines to ``agent.log`` in the work dir. ``keep``: whether a result shows something worth
    the work dir's logs (it is kept, and said so). ``errors``: what counts as a failed step.
    Without ``--storage-dir`` among its options, a bench works in the plain temp dir.
    """
    options = vars(args)
    storage = "storage_dir" in options
    parent = (options["storage_dir"] or default_storage_parent()) if storage else None
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    if storage and (kind := fs_type(workdir)[0]) in ("tmpfs", "ramfs"):
        print(f"warning: {workdir} is on {kind}: fsync costs nothing there", file=sys.stderr)
    logs = agent_logs_to(workdir / "agent.log") if agent_log else contextlib.nullcontext()
    try:
        with logs:
            result = measure(workdir)
    except errors as exc:
        print(f"{name}: {exc} (work dir kept: {workdir})", file=sys.stderr)
        return 1
    if keep(result):
        print(f"anomalies found: work dir kept for the logs: {workdir}", file=sys.stderr)
    elif not options.get("keep"):
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0
