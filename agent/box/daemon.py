"""The daemon: wires hardware -> events -> durable outbox -> uplink, and supervises it.

Threads, chosen over asyncio because every library at the edges is blocking or thread-based
(gpiozero and lgpio call back on their own threads, sqlite3 and PyAV block, paho's loop is
select-based). Each thread owns one thing and hands work on through one queue or pipe:

    buttons   button state machines; commits each alarm to the outbox (agent/box/alarms.py)
    uplink    the paho client; drains the outbox by priority; deletes on PUBACK
    dc09      with a dc09 section: the DC-09 transmitter; drains its own rows (agent/box/dc09.py)
    camera-*  one per camera: source -> segmenter -> in-memory ring (see agent/video/camera.py)
    control   the local control socket (status, simulate)
    main      signals, sd_notify READY/STATUS/WATCHDOG, health checks

Every long-lived thread runs under one Supervisor and one rule (agent/supervision.py): a
crash is logged once and the thread restarted at once; too many crashes, or a hung thread,
end the process with status 70 for systemd to restart. The watchdog ping is sent only while
the core threads show recent heartbeats. What the box reports of itself: agent/box/status.py.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from gpiozero.pins import Factory

from agent import __version__
from agent.box import status
from agent.box.alarms import AlarmWriter, ButtonAlarms
from agent.box.commands import CentreCommands
from agent.box.control import ControlServer, socket_path
from agent.box.dc09 import Dc09Path
from agent.box.handlers import BoxCommands
from agent.box.requests import ControlRequests
from agent.box.walktest import WalkTest
from agent.config.model import Config
from agent.delivery.framing import CHUNK_BYTES, clip_chunks, live_chunks
from agent.delivery.outbox import Outbox
from agent.delivery.protocol import Topics
from agent.delivery.uplink.connection import LinkState
from agent.delivery.uplink.link import Uplink
from agent.delivery.uplink.pacing import Pacer
from agent.hardware.buttons import ButtonBoard, make_pin_factory
from agent.hardware.indicators import Indicators
from agent.sdnotify import Notifier
from agent.supervision import Supervisor, log_thread_exceptions
from agent.tracing import Point, Tracer, no_trace
from agent.video.chain import BoxKey
from agent.video.clips import ClipSegment
from agent.video.pipeline import Video
from agent.video.segmenter import Segment

log = logging.getLogger("agent.daemon")

HEARTBEAT_STALE_S = 5.0
CORE_THREADS = ("buttons", "uplink", "control")  # the alarm path and the technician's access


class Daemon:
    """Build with a Config; ``start()`` opens everything, ``stop()`` closes it in reverse."""

    def __init__(
        self,
        cfg: Config,
        notifier: Notifier | None = None,
        health_interval_s: float = 60.0,
        pin_factory: Factory | None = None,
        supervisor: Supervisor | None = None,
        tracer: Tracer = no_trace,
    ) -> None:
        self.cfg = cfg
        self.trace = tracer  # the benches' points on the alarm path (agent/tracing.py)
        self.supervisor = supervisor or Supervisor()
        self._pin_factory = pin_factory  # None: the one chosen by gpio.backend
        self.health_interval_s = health_interval_s
        self._next_health = 0.0  # monotonic time of the next health message
        self.walk_test = WalkTest(Path(cfg.storage.path))
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.site.id)
        self.notifier = notifier or Notifier.from_env()
        self.started_at = time.time()
        self._stale: list[str] = []  # core threads without a recent heartbeat, last turn
        self._last_summary = ""  # systemd's STATUS= as last sent
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.alarms: AlarmWriter | None = None
        self.button_alarms: ButtonAlarms | None = None
        self.buttons: ButtonBoard | None = None
        self.control: ControlServer | None = None
        self.indicators: Indicators | None = None
        self.commands: CentreCommands | None = None
        self.video: Video | None = None
        self.dc09: Dc09Path | None = None
        # The alarm paths and the technician's access: the watchdog ping needs them all alive.
        self.core_threads = CORE_THREADS + (("dc09",) if cfg.dc09 else ())

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        storage = Path(self.cfg.storage.path)
        storage.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.walk_test.load()
        self.outbox = Outbox.open(storage / "outbox.db")
        self.box_key = BoxKey.load_or_create(storage)
        self.video = Video(self.cfg, storage, self._on_clip_segment, self.box_key)
        factory = self._pin_factory or make_pin_factory(self.cfg.gpio.backend)
        self.indicators = Indicators(self.cfg.indicators, factory)
        handlers = BoxCommands(
            indicators=self.indicators,
            video=self.video,
            topics=self.topics,
            summary=self._summary,
            set_test_mode=self.set_test_mode,
        )
        self.commands = CentreCommands.open(
            self.cfg, storage, handlers, self.topics, self.outbox, self.trace
        )
        self.uplink = Uplink(
            self.cfg.mqtt,
            self.topics,
            self.outbox,
            self._status_payload,
            pacer=Pacer(self.cfg.uplink.max_kbps, self.cfg.uplink.auto_rate),
            on_message=self._on_message,
            on_clip_receipt=self.video.release,
            subscriptions=(self.topics.cmd,) if self.commands else (),
            tracer=self.trace,
        )
        self.alarms = AlarmWriter(self.cfg, self.topics, self.outbox, self.uplink.wake)
        if self.cfg.dc09 is not None:
            self.dc09 = Dc09Path(
                self.cfg, self.cfg.dc09.settings, self.outbox, self.alarms.box_alarm
            )
        self.button_alarms = ButtonAlarms(
            self.cfg,
            self.alarms,
            self.uplink.wake,
            walk_test=self.walk_test,
            dc09=self.dc09,
            indicators=self.indicators,
            video=self.video,
            tracer=self.trace,
        )
        self.buttons = ButtonBoard(self.cfg.buttons, factory, self.button_alarms.on_event)
        requests = ControlRequests(
            status=self.status,
            buttons=self.buttons,
            indicators=self.indicators,
            supervisor=self.supervisor,
            set_test_mode=self.set_test_mode,
            simulated=self.cfg.gpio.backend == "mock",
        )
        self.control = ControlServer(socket_path(storage), requests.handle)
        self.indicators.start()
        self.video.start(self.supervisor)
        if self.outbox.recovered_from is not None:
            self.alarms.fault(
                f"the outbox was corrupt and was replaced (kept as "
                f"{self.outbox.recovered_from.name}): alarms queued in it may "
                "not have been sent"
            )
        self.video.on_live(self._on_live_segment)
        self.uplink.post_latest(self.topics.pubkey, self.box_key.public_pem())
        self.uplink.start(self.supervisor)
        if self.dc09 is not None:
            self.dc09.start(self.supervisor)
        self.buttons.start(supervisor=self.supervisor)
        self.control.start(self.supervisor)
        pending = self.outbox.depth()
        log.info(
            "agent %s started for site %s; outbox holds %s", __version__, self.cfg.site.id, pending
        )
        self.notifier.send(ready="1", status=self._summary())

    def stop(self) -> None:
        self.notifier.send(stopping="1")
        # The uplink before the video: a receipt must not reach a closed spool. Clip chunks
        # the video stores as it stops are in the outbox, and go out after the restart.
        for part in (
            self.control,
            self.buttons,
            self.uplink,
            self.dc09,
            self.video,
            self.indicators,
        ):
            if part is not None:
                part.stop()
        if self.outbox is not None:
            self.outbox.close()
        if self.commands is not None:
            self.commands.close()
        log.info("agent stopped")

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop. Returns the process exit code."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        signal.signal(
            signal.SIGHUP,
            lambda *_: log.warning(
                "SIGHUP ignored: restart the agent to apply configuration changes"
            ),
        )
        log_thread_exceptions()
        self.start()
        try:
            self.serve(stop)
        finally:
            self.stop()
        return 0

    def serve(self, stop: threading.Event) -> None:
        """The main thread's part of a running agent, until ``stop`` is set: one turn a
        second (half the watchdog interval at most), itself under the supervisor's rule.

        What :meth:`run` does between start and stop, without the signal handlers (which only
        the main thread may set), so that a test, a bench or the demo runs the daemon in its
        own process, on any thread, exactly as systemd's agent runs."""
        interval = min(1.0, (self.notifier.watchdog_s or 2.0) / 2)
        self._next_health = time.monotonic()
        self.supervisor.run_turns(self._supervise_once, interval, stop)

    def _supervise_once(self) -> None:
        """One turn: test-mode expiry, indicators, health, the watchdog, systemd's STATUS."""
        if self.walk_test.expired():
            self.set_test_mode(None)
        if self.indicators is not None and self.uplink is not None:
            self.indicators.centre(self.uplink.centre_present)
            self.indicators.tick()
        if self.dc09 is not None and self.uplink is not None:
            self.dc09.mqtt_path(self.uplink.state is LinkState.ONLINE)
        if time.monotonic() >= self._next_health and self.uplink is not None:
            self.uplink.post_latest(self.topics.health, self.health_payload())
            self._next_health = time.monotonic() + self.health_interval_s
        stale = self.supervisor.stale(HEARTBEAT_STALE_S, self.core_threads)
        if not stale:
            self.notifier.send(watchdog="1")
        elif stale != self._stale:
            log.error("thread(s) %s stalled; withholding the watchdog ping", ", ".join(stale))
        self._stale = stale
        summary = self._summary()
        if summary != self._last_summary:
            self.notifier.send(status=summary)
            self._last_summary = summary

    def healthy(self) -> bool:
        return not self.supervisor.stale(HEARTBEAT_STALE_S, self.core_threads)

    # --- video (clips on the clips thread, live on a camera's) ------------------------------

    def _on_clip_segment(self, cs: ClipSegment) -> None:
        """A clip segment is on disk: queue its chunks, below alarms, and keep the spool in
        its budget by dropping whole clips, oldest first (never an alarm)."""
        assert self.outbox is not None and self.uplink is not None and self.video is not None
        assert self.alarms is not None
        size = self.uplink.pacer.chunk_bytes(CHUNK_BYTES)  # smaller on a slow link
        self.outbox.add_many(clip_chunks(self.topics, cs, size, sig=self.video.signature(cs)))
        self.uplink.wake()
        while self.video.over_budget():
            oldest = self.outbox.drop_oldest_clip(keep=cs.event_id)
            if oldest is None:
                break
            self.video.release(oldest)
            self.alarms.fault(
                f"clip of alarm {oldest} dropped: the spool is over "
                f"storage.max_gb={self.cfg.storage.max_gb}"
            )

    def _on_live_segment(
        self, camera_id: str, session: str, segment: Segment, seq: int, final: bool
    ) -> None:
        assert self.uplink is not None
        self.trace(Point.LIVE_SEGMENT, segment.sha256)
        self.uplink.post_live(
            self.topics.live(camera_id),
            live_chunks(session, segment, seq, final, self.uplink.pacer.chunk_bytes(CHUNK_BYTES)),
        )
        self.trace(Point.LIVE_POSTED, segment.sha256)

    def _on_message(self, topic: str, payload: bytes) -> None:
        """What the uplink receives besides receipts and presence: the centre's commands."""
        if self.commands is not None and self.uplink is not None:
            self.commands.on_message(self.uplink, topic, payload)

    # --- test mode -------------------------------------------------------------------------

    def set_test_mode(self, minutes: int | None) -> str | None:
        """A walk test for ``minutes`` (None: off): alarms carry ``test: true`` meanwhile; it
        switches itself off (agent/box/walktest.py). Returns when it ends, or None."""
        was_on = self.walk_test.until_wall() is not None  # also when it has just expired
        if minutes is None:
            self.walk_test.stop()
        else:
            self.walk_test.start(minutes)
        if self.dc09 is not None and was_on != self.walk_test.active():
            self.dc09.test_mode(not was_on)
        until = status.test_mode_until(self.walk_test)
        log.warning("test mode %s", f"ON until {until}" if until else "OFF")
        if self.uplink is not None:
            self.uplink.post_latest(self.topics.status, self._status_payload("online", ""))
        return until

    # --- what the box says about itself (agent/box/status.py) -------------------------------

    def status(self) -> dict[str, Any]:
        return status.status(self)

    def health_payload(self) -> bytes:
        return status.health(self)

    def _summary(self) -> str:
        return status.summary(self.uplink, self.outbox)

    def _status_payload(self, state: str, reason: str) -> bytes:
        return status.status_message(self.cfg, self.walk_test, state, reason)
