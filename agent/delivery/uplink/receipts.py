"""The centre's side of delivery, as the box sees it: receipts and the centre's presence.

The broker's PUBACK only says the broker has an alarm; a broker can lose it (killed before it
saved it). So an alarm stays in the outbox until a receipt from the centre's receiver names it,
and is sent again every ``resend_s`` while a centre listens (with none, the broker already
queues the first copy for the centre's persistent session). Presence is each receiver's
retained status; "listening" means any receiver is online.

Uplink thread only, inside paho's callbacks and the loop: no lock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from agent.delivery.outbox import Message, Outbox
from agent.delivery.protocol import parse_receipt
from agent.errors import OutboxError, ProtocolError

log = logging.getLogger("agent.uplink")


class Confirmations:
    def __init__(
        self,
        outbox: Outbox,
        resend_s: float,
        clock: Callable[[], float],
        on_clip_receipt: Callable[[str, str], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._resend_s = resend_s
        self._clock = clock
        self._on_clip_receipt = on_clip_receipt
        self._unconfirmed: dict[int, float] = {}  # alarm row id -> when to send it again
        self._receivers: dict[str, bool] = {}  # presence topic -> online
        self.present: bool | None = None  # unknown until the retained presence arrives

    def load(self) -> None:
        """After a (re)start: the alarms the broker had acked but the centre had not confirmed."""
        try:
            due = self._clock() + self._resend_s
            self._unconfirmed = dict.fromkeys(self._outbox.delivered(), due)
        except OutboxError as exc:
            log.error("cannot read unconfirmed alarms: %s", exc)

    def delivered(self, row: int) -> None:
        """The broker acked alarm ``row``: wait for the centre's receipt."""
        self._unconfirmed.setdefault(row, self._clock() + self._resend_s)
        try:
            self._outbox.mark_delivered(row)
        except OutboxError as exc:
            log.error("cannot mark alarm %d delivered: %s", row, exc)

    def due(self, now: float, in_flight: set[int]) -> list[Message]:
        """The alarms to send again now, only while a centre listens."""
        if not self.present:
            return []
        out = []
        for row, due in list(self._unconfirmed.items()):
            if due > now or row in in_flight:
                continue
            try:
                msg = self._outbox.get(row)
            except OutboxError as exc:
                log.error("cannot read alarm %d to resend it: %s", row, exc)
                continue
            if msg is None:  # confirmed meanwhile
                del self._unconfirmed[row]
                continue
            self._unconfirmed[row] = now + self._resend_s
            log.info("alarm %s not yet confirmed by the centre; sending it again", msg.key)
            out.append(msg)
        return out

    def next_due(self) -> float | None:
        """When the next resend falls due, while a centre listens (for the loop's timeout)."""
        return min(self._unconfirmed.values()) if self.present and self._unconfirmed else None

    def on_receipt(self, payload: bytes) -> None:
        try:
            receipt = parse_receipt(payload)
            for row in self._outbox.confirm(receipt.alarms):
                self._unconfirmed.pop(row, None)
        except (ProtocolError, OutboxError) as exc:
            log.warning("ignoring a receipt: %s", exc)
            return
        if receipt.alarms:
            log.info("the centre confirmed alarm(s) %s", ", ".join(receipt.alarms))
        for event_id, camera_id in receipt.clips:
            if self._on_clip_receipt is not None:
                self._on_clip_receipt(event_id, camera_id)

    def on_presence(self, topic: str, payload: bytes) -> None:
        try:
            online = json.loads(payload).get("state") == "online" if payload else False
        except (ValueError, AttributeError):
            online = False
        self._receivers[topic] = online
        present = any(self._receivers.values())
        if present and not self.present:
            now = self._clock()
            self._unconfirmed = dict.fromkeys(self._unconfirmed, now)  # resend what waits
        if present != self.present:
            log.log(
                logging.INFO if present else logging.WARNING,
                "the centre is %s",
                "listening" if present else "NOT listening",
            )
        self.present = present

    def connection_ended(self) -> None:
        """Presence is learnt again on the next connection (it is retained); until then the
        centre's state is unknown, not "listening"."""
        self.present = None
        self._receivers.clear()
