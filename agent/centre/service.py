"""The centre's reference receiver (``edge-agent central``): what the ЦОУ runs, kept small.

It must not trust the 7,600 boxes it hears from (docs/security.md, "A hostile box"), so it is
built as two independent paths, each with its own MQTT connection (a persistent session the
broker queues for while the receiver is away) and its own worker thread:

- **alarms** (``{prefix}/+/alarm`` and ``+/status``): agent/centre/receiver.py checks each message
  against its schema on the link's thread and stores it on the ``alarms`` thread: the ledger
  (agent/centre/ledger.py), ``alarms.jsonl``, a receipt to the box;
- **video** (``+/clip/+``, ``+/live/+``, ``+/pubkey``): agent/centre/assembler.py rebuilds and
  verifies clips and appends live segments on the ``video`` thread.

So megabytes of video, from an honest school or a hostile one, never sit in front of an alarm:
not in the broker's queue for the connection, not on a socket, not on a thread.

Sizes are bounded by the broker (``max_packet_size``, docs/broker.md) and then by each
message's schema. The links do not advertise an MQTT 5 Maximum Packet Size of their own:
Mosquitto 2.0.11 then holds a larger message in the session's queue, and every message after
it waits forever (found by tests/adversarial: one 100 KB alarm from one box stopped every
school's alarms).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.centre.assembler import Assembler
from agent.centre.commander import refuse_key_in_store
from agent.centre.intake import Limits, Reporter
from agent.centre.ledgers import open_ledger
from agent.centre.ledgerstore import LedgerStore
from agent.centre.link import Endpoint, Link, Message
from agent.centre.receiver import GROUP_MAX, AlarmDesk
from agent.delivery.protocol import (
    SITE_ID,
    BoxTopic,
    centre_presence_topic,
    parse_box_topic,
    presence_payload,
)
from agent.delivery.schema import WireError
from agent.tracing import Point, Tracer, no_trace

log = logging.getLogger("agent.centre")


class Receiver:
    """:meth:`open` (or create with a ledger), :meth:`start`, :meth:`stop`. ``subscribed``
    once both links are up. The ledger is closed by :meth:`stop`."""

    def __init__(
        self,
        endpoint: Endpoint,
        topic_prefix: str,
        store: Path,
        client_id: str,
        ledger: LedgerStore,
        on_alarm: Callable[[dict[str, Any]], None] | None = None,
        limits: Limits | None = None,
        group_max: int = GROUP_MAX,
        tracer: Tracer = no_trace,
    ) -> None:
        self.store, self.prefix, self.client_id = store, topic_prefix, client_id
        self._trace = tracer  # the benches' points (agent/tracing.py)
        self.ledger = ledger
        limits = limits or Limits()
        reporter = Reporter(self.ledger, limits.report_every_s)
        self._presence = centre_presence_topic(
            topic_prefix, re.sub(r"[^A-Za-z0-9_.-]", "_", client_id)
        )
        self.alarm_link = Link(
            "alarms",
            endpoint,
            client_id,
            [f"{topic_prefix}/+/alarm", f"{topic_prefix}/+/status"],
            self.alarm_message,
            on_change=lambda up, why: self._changed("alarms", up, why),
            hello=lambda: self._presence_message("online"),
            will=self._presence_message("offline"),
        )
        self.video_link = Link(
            "video",
            endpoint,
            f"{client_id}-video",
            [f"{topic_prefix}/+/clip/+", f"{topic_prefix}/+/live/+", f"{topic_prefix}/+/pubkey"],
            self.video_message,
            on_change=lambda up, why: self._changed("video", up, why),
        )
        self.desk = AlarmDesk(
            store,
            topic_prefix,
            self.ledger,
            reporter,
            limits,
            self.alarm_link.publish,
            on_alarm,
            group_max,
        )
        self.assembler = Assembler(
            store, topic_prefix, self.ledger, reporter, limits, self.video_link.publish, tracer
        )
        self._reporter = reporter

    @classmethod
    def open(
        cls,
        endpoint: Endpoint,
        topic_prefix: str,
        store: Path,
        client_id: str,
        on_alarm: Callable[[dict[str, Any]], None] | None = None,
        limits: Limits | None = None,
        group_max: int = GROUP_MAX,
        ledger_url: str | None = None,
        tracer: Tracer = no_trace,
    ) -> Receiver:
        """A receiver on the store's ledger (or PostgreSQL's at ``ledger_url``), unless the
        centre's signing key lies in the store."""
        refuse_key_in_store(store)
        ledger = open_ledger(store, ledger_url, recover=True)
        return cls(
            endpoint, topic_prefix, store, client_id, ledger, on_alarm, limits, group_max, tracer
        )

    @property
    def subscribed(self) -> bool:
        return self.alarm_link.subscribed.is_set() and self.video_link.subscribed.is_set()

    def start(self) -> None:
        for link in ("alarms", "video"):  # a crash before was an outage too
            self.ledger.link_changed(self.client_id, link, False, "receiver started")
        self.desk.start()
        self.assembler.start()
        self.alarm_link.start()
        self.video_link.start()
        log.info("receiver %s started: store %s", self.client_id, self.store)

    def stop(self) -> None:
        """The links first (no new work, presence offline), then the workers; the ledger last."""
        self.alarm_link.stop(self._presence_message("offline"))
        self.video_link.stop()
        idle = [self.desk.stop(), self.assembler.stop()]  # both, whatever the first says
        for link in ("alarms", "video"):
            self.ledger.link_changed(self.client_id, link, False, "receiver stopped", outage=False)
        if all(idle):
            self.ledger.close()
        else:  # closing it under a busy thread would fail that thread's write
            log.warning("receiver stopped while still writing; the ledger closes with the process")

    def _presence_message(self, state: str) -> Message:
        return Message(self._presence, presence_payload(state, time.time()), True)

    def alarm_message(self, topic: str, payload: bytes) -> None:
        """A message on the alarm link (its thread): checked, then queued for the desk."""
        self._trace(Point.CENTRE_ALARM, "")
        parsed = self._topic(topic)
        if parsed is not None:
            self.desk.take(parsed, payload)

    def video_message(self, topic: str, payload: bytes) -> None:
        """A message on the video link (its thread): its header checked, then queued."""
        parsed = self._topic(topic)
        if parsed is not None:
            self.assembler.take(parsed, payload)

    def _topic(self, topic: str) -> BoxTopic | None:
        try:
            return parse_box_topic(self.prefix, topic)
        except WireError as exc:  # e.g. clip/{not a camera id}: the ACL allows clip/#
            site = topic.removeprefix(f"{self.prefix}/").partition("/")[0]
            self._reporter.report(
                site if SITE_ID.fullmatch(site) else "_broker",
                "refused",
                f"a message on an unexpected topic: {exc}",
            )
            return None

    def _changed(self, link: str, up: bool, why: str) -> None:
        try:
            self.ledger.link_changed(self.client_id, link, up, why)
        except Exception:  # the status display is not worth a link
            log.exception("cannot record the %s link's state", link)


def run_receiver(
    broker: str | Endpoint,
    topic_prefix: str,
    store: Path,
    client_id: str | None = None,
    stop: threading.Event | None = None,
    on_alarm: Callable[[dict[str, Any]], None] | None = None,
    limits: Limits | None = None,
    group_max: int = GROUP_MAX,
    ledger_url: str | None = None,
) -> None:
    """Receive until ``stop`` is set. ``broker``: an Endpoint, or a plain ``mqtt://`` URL."""
    endpoint = broker if isinstance(broker, Endpoint) else Endpoint.parse(broker)
    receiver = Receiver.open(
        endpoint,
        topic_prefix,
        store,
        client_id or f"edge-central-{socket.gethostname()}",
        on_alarm,
        limits,
        group_max,
        ledger_url,
    )
    receiver.start()
    try:
        (stop or threading.Event()).wait()
    finally:
        receiver.stop()
