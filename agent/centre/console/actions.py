"""What an officer can do, each action recorded in the audit log in the same transaction.

Roles are checked by the routes (routes.py) before any of this runs; here are the rules of each
action: an alarm is acknowledged once, with a reason, and a signed ``ack`` goes to its box; an
acknowledged alarm is closed once, with a note; commands to a school (ping, walk test) are
signed and recorded. An :class:`ActionError` carries the HTTP status and the sentence shown to
the officer.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from agent.box.walktest import MAX_MINUTES
from agent.centre.console import audit
from agent.centre.console.accounts import Session
from agent.centre.console.boxes import Boxes
from agent.centre.console.database import Database
from agent.centre.console.hub import Hub
from agent.centre.console.records import LedgerReader, alarm_view
from agent.clock import rfc3339
from agent.delivery.protocol import SITE_ID, UUID
from agent.errors import AgentError
from agent.logs import UNSAFE_CHARS

MAX_NOTE_CHARS = 500


class ActionError(AgentError):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def officer_text(value: object, what: str, required: bool = True) -> str:
    """An officer's reason or note: plain text, bounded, no control or invisible characters."""
    if not isinstance(value, str):
        raise ActionError(400, f"{what} is text")
    text = value.strip()
    if required and not text:
        raise ActionError(400, f"give a {what}")
    if len(text) > MAX_NOTE_CHARS or UNSAFE_CHARS.search(text):
        raise ActionError(400, f"a {what} is at most {MAX_NOTE_CHARS} characters of plain text")
    return text


def site_id(value: str) -> str:
    if not SITE_ID.fullmatch(value):
        raise ActionError(404, "no such school")
    return value


class Desk:
    def __init__(self, db: Database, ledger: LedgerReader, boxes: Boxes, hub: Hub) -> None:
        self._db, self._ledger, self._boxes, self._hub = db, ledger, boxes, hub
        self._publishing = threading.Lock()

    def alarm(self, site: str, event: str) -> dict[str, Any]:
        row = self._ledger.alarm(site_id(site), event) if UUID.fullmatch(event) else None
        if row is None:
            raise ActionError(404, "no such alarm")
        return alarm_view(row, self._db, self._ledger)

    def publish_alarm(self, site: str, event: str) -> None:
        """Tell every console. Read and published under one lock: an HTTP thread and the link's
        thread both publish the same alarm (ack, then the box's answer), and the later read,
        which holds both changes, must be the later event."""
        with self._publishing:
            self._hub.publish("alarm", self.alarm(site, event))

    def ack(self, who: Session, site: str, event: str, reason: object) -> dict[str, Any]:
        """Take the alarm over: recorded, audited, and a signed ``ack`` to the box, whose
        indicator then shows "help is coming"; its answer is shown when it comes."""
        text = officer_text(reason, "reason")
        self.alarm(site, event)
        with self._db.tx() as conn:
            if conn.execute(
                "SELECT 1 FROM incidents WHERE site_id = ? AND event_id = ?", (site, event)
            ).fetchone():
                raise ActionError(409, "this alarm was acknowledged already")
            command = self._boxes.command(conn, who.user, site, "ack", {"event_id": event})
            conn.execute(
                "INSERT INTO incidents (site_id, event_id, acked_by, acked_at, reason, "
                "command_id) VALUES (?, ?, ?, ?, ?, ?)",
                (site, event, who.user, rfc3339(time.time()), text, command.id),
            )
            audit.append(
                conn, who.user, "ack", site, event, {"reason": text, "command_id": command.id}
            )
        self._boxes.post(command)
        self.publish_alarm(site, event)
        return self.alarm(site, event)

    def close(self, who: Session, site: str, event: str, note: object) -> dict[str, Any]:
        text = officer_text(note, "note")
        self.alarm(site, event)
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT closed_at FROM incidents WHERE site_id = ? AND event_id = ?", (site, event)
            ).fetchone()
            if row is None:
                raise ActionError(409, "acknowledge the alarm before closing it")
            if row[0] is not None:
                raise ActionError(409, "this alarm was closed already")
            conn.execute(
                "UPDATE incidents SET closed_by = ?, closed_at = ?, note = ? "
                "WHERE site_id = ? AND event_id = ?",
                (who.user, rfc3339(time.time()), text, site, event),
            )
            audit.append(conn, who.user, "close", site, event, {"note": text})
        self.publish_alarm(site, event)
        return self.alarm(site, event)

    def command(self, who: Session, site: str, name: str, args: dict[str, Any]) -> str:
        """A signed command to a school, audited; the result comes as a ``command`` event."""
        site_id(site)
        with self._db.tx() as conn:
            command = self._boxes.command(conn, who.user, site, name, args)
            audit.append(conn, who.user, name, site, command.id, args)
        self._boxes.post(command)
        return command.id

    def test_mode(self, who: Session, site: str, on: object, minutes: object) -> str:
        if not isinstance(on, bool):
            raise ActionError(400, "say whether the walk test goes on or off")
        if on and not (
            isinstance(minutes, int)
            and not isinstance(minutes, bool)
            and 1 <= minutes <= MAX_MINUTES
        ):
            raise ActionError(400, f"a walk test lasts 1 to {MAX_MINUTES} minutes")
        return self.command(
            who, site, "test_mode", {"on": True, "minutes": minutes} if on else {"on": False}
        )

    def on_result(self, site: str, command_id: str) -> None:
        """The box answered (the link's thread): tell every console."""
        row = self._db.row(
            "SELECT name, args, ok, reason, result_at FROM commands WHERE id = ?", (command_id,)
        )
        if row is None:
            return
        name, _args, ok, reason, at = row
        self._hub.publish(
            "command",
            {
                "id": command_id,
                "site_id": site,
                "name": name,
                "ok": bool(ok),
                "reason": reason,
                "at": at,
            },
        )
        incident = self._db.row(
            "SELECT event_id FROM incidents WHERE command_id = ?", (command_id,)
        )
        if incident is not None:
            self.publish_alarm(site, str(incident[0]))
