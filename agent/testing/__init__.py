"""The public test harness, shared by the tests, the benches and ``edge-agent demo``.

- ``site.py``: a simulated site (a private broker, the simulated school's config, the agent in
  this process or as a process, the centre's receiver), started and stopped as one; its parts
  are ``school.py`` (the config), ``agents.py`` (the agent in this process or as a process) and
  ``site.py``'s own ``Centre``, and every name of theirs can be imported from ``site.py``;
- ``mqtt.py``: the one MQTT client the tests and benches use to watch and talk to a broker;
  ``receipts.py``: the centre's receipts read by ``mosquitto_sub`` (also from ``mqtt.py``);
- ``netns.py``: a private network (namespaces, veth, tc) to cut, black-hole and shape a link;
- ``broker.py``: the private Mosquitto; ``stats.py``: percentiles and machine context;
- ``central.py``: the centre's receiver as a process; ``browser.py``: headless Chromium;
- ``bench.py``: what every bench does around its measurement (options, work dir, report).

It ships in the package (the demo needs it) and so imports nothing beyond the agent's own
dependencies: no pytest. A failed wait raises ``AssertionError``, which pytest reports as a
failure and a bench reports as the step that failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# The least camera that keeps the agent's camera and clips threads running (for the crash-only
# tests and bench): tiny and slow, so it costs little CPU beside what is measured, and linked
# to no button, so no press makes a clip.
SMALL_CAMERA = {
    "id": "hall-cam",
    "source": "synthetic:hall",
    "size": "160x90",
    "fps": 5,
    "segment_s": 1,
    "pre_alarm_s": 2,
    "post_alarm_s": 1,
}


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    what: str = "condition",
    poll_s: float = 0.02,
) -> T:
    """Poll until ``predicate`` returns something true, and return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll_s)
