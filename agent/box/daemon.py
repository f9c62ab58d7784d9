"""The daemon: wires hardware -> events -> durable outbox -> uplink, and supervises it.

Threads, chosen over asyncio because every library at the edges is blocking or thread-based
(gpiozero and lgpio call back on their own threads, sqlite3 and PyAV block, paho's loop is
select-based). Each thread owns one thing and hands work on through one queue or pipe:

    buttons   button state machines; commits each alarm to the outbox (the alarm path)
    uplink    the paho client; drains the outbox by priority; deletes on PUBACK
    dc09      with a dc09 section: the DC-09 transmitter; drains its own rows (agent/box/dc09.py)
    camera-*  one per camera: source -> segmenter -> in-memory ring (see agent/cameras.py)
    control   the local control socket (status, simulate)
    main      signals, sd_notify READY/STATUS/WATCHDOG, health checks

Every long-lived thread runs under one Supervisor and one rule (agent/supervision.py): a
crash is logged once and the thread restarted at once; too many crashes, or a hung thread,
end the process with status 70 for systemd to restart. The watchdog ping is sent only while
the core threads show recent heartbeats.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from gpiozero.pins import Factory

from agent import __version__
from agent.box.control import ControlServer, socket_path
from agent.box.dc09 import Dc09Path
from agent.box.handlers import BoxCommands
from agent.box.walktest import WalkTest
from agent.clock import clock_synced, rfc3339, rfc3339_or_none
from agent.commands.keys import load_public_key
from agent.commands.nonces import NonceStore
from agent.commands.router import CommandRouter
from agent.commands.verify import CommandVerifier
from agent.config.model import Config
from agent.delivery.framing import CHUNK_BYTES, clip_chunks, live_chunks
from agent.delivery.outbox import Outbox
from agent.delivery.protocol import (
    PROTOCOL_VERSION,
    Alarm,
    AlarmKind,
    Priority,
    Status,
    Topics,
    dumps,
    new_event_id,
)
from agent.delivery.uplink.link import LinkState, Uplink
from agent.delivery.uplink.pacing import Pacer
from agent.errors import AgentError
from agent.hardware.buttons import ButtonBoard, ButtonEvent, make_pin_factory
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
        self.last_alarm: dict[str, Any] | None = None
        self._stale: list[str] = []  # core threads without a recent heartbeat, last turn
        self._last_summary = ""  # systemd's STATUS= as last sent
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.buttons: ButtonBoard | None = None
        self.control: ControlServer | None = None
        self.indicators: Indicators | None = None
        self.router: CommandRouter | None = None
        self.video: Video | None = None
        self.dc09: Dc09Path | None = None
        # The alarm paths and the technician's access: the watchdog ping needs them all alive.
        self.core_threads = CORE_THREADS + (("dc09",) if cfg.dc09 else ())
        self._nonces: NonceStore | None = None

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
        self.router = self._command_router(
            storage,
            BoxCommands(
                indicators=self.indicators,
                video=self.video,
                topics=self.topics,
                summary=self._summary,
                set_test_mode=self.set_test_mode,
            ),
        )
        self.uplink = Uplink(
            self.cfg.mqtt,
            self.topics,
            self.outbox,
            self._status_payload,
            pacer=Pacer(self.cfg.uplink.max_kbps, self.cfg.uplink.auto_rate),
            on_message=self._on_message,
            on_clip_receipt=self.video.release,
            subscriptions=(self.topics.cmd,) if self.router else (),
            tracer=self.trace,
        )
        self.buttons = ButtonBoard(self.cfg.buttons, factory, self._on_button)
        self.control = ControlServer(socket_path(storage), self._on_control)
        if self.cfg.dc09 is not None:
            self.dc09 = Dc09Path(self.cfg, self.cfg.dc09.settings, self.outbox, self._box_alarm)
        self.indicators.start()
        self.video.start(self.supervisor)
        if self.outbox.recovered_from is not None:
            self._system_fault(
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
        if self._nonces is not None:
            self._nonces.close()
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

    # --- the alarm path (runs on the buttons thread) ----------------------------------------

    def _on_button(self, event: ButtonEvent) -> dict[str, Any] | None:
        assert self.outbox is not None and self.uplink is not None
        self.trace(Point.EDGE, event.button_id)
        button = self.cfg.button(event.button_id)
        test = self.walk_test.active()
        path = self.dc09
        dc09 = path.for_button(button, event.change, test) if path else None
        if event.kind is None:  # a release: no alarm on MQTT, a restore on DC-09 if wanted
            if path is not None and dc09 is not None:
                path.add(dc09, event.wall_time)
            return None
        event_id = new_event_id()
        synced = clock_synced()

        def build(seq: int) -> bytes:
            return Alarm(
                event_id=event_id,
                seq=seq,
                site_id=self.cfg.site.id,
                button_id=button.id,
                location=button.location,
                kind=str(event.kind),
                pressed_at=rfc3339(event.wall_time),
                clock_synced=synced,
                detail=event.detail,
                test=test,
            ).to_json()

        also = path.row(dc09, event.wall_time, event_id) if path and dc09 else None
        seq, durable = self.outbox.add_alarm(self.topics.alarm, event_id, build, also=also)
        self.trace(Point.COMMITTED, event_id)
        self.uplink.wake()
        if path is not None and also is not None:
            path.wake()
        if event.kind is AlarmKind.PANIC:
            if self.indicators is not None:
                self.indicators.alarm(event_id)
            if self.video is not None:  # after the commit: video never delays an alarm
                self.video.record_alarm(event_id, event.wall_time, button.id)
        self.last_alarm = {
            "event_id": event_id,
            "seq": seq,
            "button_id": button.id,
            "kind": str(event.kind),
            "at": rfc3339(event.wall_time),
            "durable": durable,
        }
        log.warning(
            "%s: button=%s location=%r seq=%d event_id=%s%s%s",
            str(event.kind).upper(),
            button.id,
            button.location,
            seq,
            event_id,
            f" detail={event.detail!r}" if event.detail else "",
            f" dc09={dc09.kind}/{dc09.zone:03d}" if dc09 else "",
        )
        self.trace(Point.HANDLED, event_id)
        return self.last_alarm

    # --- clips (run on the clips thread) ----------------------------------------------------

    def _on_clip_segment(self, cs: ClipSegment) -> None:
        """A clip segment is on disk: queue its chunks, below alarms, and keep the spool in
        its budget by dropping whole clips, oldest first (never an alarm)."""
        assert self.outbox is not None and self.uplink is not None and self.video is not None
        size = self.uplink.pacer.chunk_bytes(CHUNK_BYTES)  # smaller on a slow link
        self.outbox.add_many(clip_chunks(self.topics, cs, size, sig=self.video.signature(cs)))
        self.uplink.wake()
        while self.video.over_budget():
            oldest = self.outbox.drop_oldest_clip(keep=cs.event_id)
            if oldest is None:
                break
            self.video.release(oldest)
            self._system_fault(
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

    def _system_fault(self, detail: str) -> None:
        """A fault of the box itself (not of a button), on the alarm topic like the others."""
        self._box_alarm(AlarmKind.FAULT, detail)
        log.error("FAULT: %s", detail)

    def _box_alarm(self, kind: AlarmKind, detail: str) -> None:
        """An alarm about the box itself (any thread), logged by the caller."""
        assert self.outbox is not None and self.uplink is not None
        event_id = new_event_id()
        now = time.time()

        def build(seq: int) -> bytes:
            return Alarm(
                event_id=event_id,
                seq=seq,
                site_id=self.cfg.site.id,
                button_id="",
                location=self.cfg.site.name,
                kind=str(kind),
                pressed_at=rfc3339(now),
                clock_synced=clock_synced(),
                detail=detail,
            ).to_json()

        self.outbox.add_alarm(self.topics.alarm, event_id, build)
        self.uplink.wake()

    # --- commands from the centre (run on the uplink thread) -------------------------------

    def _command_router(self, storage: Path, handlers: BoxCommands) -> CommandRouter | None:
        """Commands only with the centre's public key; a box that cannot verify obeys nothing."""
        key_file = self.cfg.commands.public_key_file
        if key_file is None:
            log.info("commands disabled: no commands.public_key_file in the config")
            return None
        try:
            self._nonces = NonceStore.open(storage / "nonces.db")
            verifier = CommandVerifier(load_public_key(key_file), self.cfg.site.id, self._nonces)
        except AgentError as exc:
            log.error("commands disabled: %s", exc)
            return None
        return CommandRouter(verifier, handlers.specs())

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.topics.cmd or self.router is None:
            return
        assert self.outbox is not None and self.uplink is not None
        self.trace(Point.COMMAND, "")
        reply = self.router.respond(payload)
        self.trace(Point.APPLIED, reply.command_id or "")
        if reply.authenticated and reply.command_id is not None:
            self.outbox.add(
                Priority.CONTROL,
                self.topics.cmd_result,
                f"result/{reply.command_id}",
                reply.payload,
            )
            self.uplink.wake()
        else:
            self.uplink.post_transient(self.topics.cmd_result, reply.payload)

    # --- control and status -----------------------------------------------------------------

    def _on_control(self, req: dict[str, Any]) -> dict[str, Any]:
        match req.get("cmd"):
            case "status":
                return {"ok": True, "status": self.status()}
            case "simulate":
                assert self.buttons is not None
                action = req.get("action")
                if action not in ("press", "release"):
                    raise AgentError("simulate needs action 'press' or 'release'")
                events = self.buttons.simulate(str(req.get("button")), action == "press")
                return {"ok": True, "events": events}
            case "indicator_reset":
                assert self.indicators is not None
                self.indicators.reset()
                return {"ok": True, "status": self.status()}
            case "inject":
                self._inject(req)
                return {"ok": True, "status": self.status()}
            case "test_mode":
                minutes = req.get("minutes", 30)
                if req.get("on") is not True:
                    self.set_test_mode(None)
                elif not isinstance(minutes, int):
                    raise AgentError("test mode needs a whole number of minutes")
                else:
                    try:
                        self.set_test_mode(minutes)
                    except ValueError as exc:  # the walk test's own limit
                        raise AgentError(str(exc)) from exc
                return {"ok": True, "status": self.status()}
            case other:
                raise AgentError(f"unknown control command {other!r}")

    def _inject(self, req: dict[str, Any]) -> None:
        """The test seam for crash-only threads: crash or hang a thread, like a bug would.
        Only in the simulated school, as ``simulate``: a real box never takes it."""
        if self.cfg.gpio.backend != "mock":
            raise AgentError("inject works only in a simulated school (gpio.backend: mock)")
        hang_s = req.get("hang_s", 0)
        if not isinstance(hang_s, int | float) or not 0 <= hang_s <= 120:
            raise AgentError("hang_s is 0 to 120 seconds")
        self.supervisor.inject(str(req.get("thread")), hang_s=float(hang_s))

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
        until = self._test_mode_until()
        log.warning("test mode %s", f"ON until {until}" if until else "OFF")
        if self.uplink is not None:
            self.uplink.post_latest(self.topics.status, self._status_payload("online", ""))
        return until

    def health_payload(self) -> bytes:
        heads = self.video.chain_heads() if self.video else {}
        return dumps(
            {
                **self.status(),
                "chain_heads": heads,
                "at": rfc3339(time.time()),
                "v": PROTOCOL_VERSION,
            }
        )

    def status(self) -> dict[str, Any]:
        assert self.outbox is not None and self.uplink is not None and self.buttons is not None
        storage = Path(self.cfg.storage.path)
        disk = shutil.disk_usage(storage)
        return {
            "site_id": self.cfg.site.id,
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1),
            "thread_crashes": self.supervisor.status(),
            "clock_synced": clock_synced(),
            "uplink": {
                "state": str(self.uplink.state),
                "last_error": self.uplink.last_error,
                "sent": self.uplink.sent,
                "failures": self.uplink.failures,
                "last_ack_at": rfc3339_or_none(self.uplink.last_ack_at),
                "centre": {True: "listening", False: "NOT listening", None: "unknown"}[
                    self.uplink.centre_present
                ],
                "broker": f"{self.cfg.mqtt.host}:{self.cfg.mqtt.port}",
                "pacing": self.uplink.pacer.status(),
            },
            "outbox": {
                **self.outbox.depth(),
                "last_seq": self.outbox.last_seq(),
                "disk_error": self.outbox.disk_error,
            },
            "dc09": self.dc09.status() if self.dc09 else None,
            "last_alarm": self.last_alarm,
            "buttons": self.buttons.snapshot(),
            **(self.video.status() if self.video else {}),
            "test_mode_until": self._test_mode_until(),
            "indicator": str(self.indicators.pattern) if self.indicators else "off",
            "disk_free_mb": disk.free // 1_000_000,
            "cpu_temp_c": _cpu_temp(),
        }

    def _summary(self) -> str:
        if self.uplink is None or self.outbox is None:
            return "starting"
        depth = self.outbox.depth()
        return f"uplink {self.uplink.state}; outbox alarms={depth['alarm']} clips={depth['clip']}"

    def _status_payload(self, state: str, reason: str) -> bytes:
        return Status(
            state=state,
            site_id=self.cfg.site.id,
            at=rfc3339(time.time()),
            agent_version=__version__,
            reason=reason,
            test_mode_until=self._test_mode_until() if state == "online" else None,
        ).to_json()

    def _test_mode_until(self) -> str | None:
        until = self.walk_test.until_wall()
        return rfc3339(until) if until is not None else None


def _cpu_temp() -> float | None:
    """The SoC temperature on a Pi (a hot box in a cupboard throttles, then fails)."""
    try:
        return int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000
    except (OSError, ValueError):
        return None
