"""The console's MQTT session with the boxes: signed commands out, results and health in.

Its own persistent session (``{client id}``), on the centre listener with the centre's
certificate (docs/broker.md), through the receiver's :class:`agent.centre.link.Link` (one
thread, ``link-console``, back within a second of the broker). It subscribes to
``+/cmd/result`` and ``+/health`` only: alarms, statuses and video are the receiver's.

Both come from boxes, so both are untrusted: bounded in size, strictly parsed, and a result is
kept only when it answers a command this console sent to that same site, once (a later copy is
a duplicate delivery or a replay: docs/commands.md, "For the centre").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.centre.console import audit
from agent.centre.console.database import Database
from agent.centre.link import Endpoint, Link
from agent.clock import parse_rfc3339, rfc3339
from agent.commands.keys import load_private_key, sign_command
from agent.delivery.protocol import SITE_ID, UUID, Topics
from agent.delivery.schema import WireError, load_object
from agent.logs import escape

log = logging.getLogger("agent.console")

MAX_RESULT_BYTES = 4096
MAX_HEALTH_BYTES = 32 * 1024
MAX_SITES = 20_000  # health kept in memory, one per site
MAX_TEXT = 200


@dataclass(frozen=True, slots=True)
class Outgoing:
    id: str
    site: str
    payload: bytes


class Boxes:
    """``start()``, :meth:`send`, ``stop()``. ``on_result(site, command_id)`` and
    ``on_health(site, health)`` run on the link's thread and must be short."""

    def __init__(
        self,
        endpoint: Endpoint,
        prefix: str,
        client_id: str,
        key_file: Path,
        db: Database,
        on_result: Callable[[str, str], None],
        on_health: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self._prefix, self._db = prefix, db
        self._key = load_private_key(key_file)  # refuses a key others can read
        self._on_result, self._on_health = on_result, on_health
        self.health: dict[str, dict[str, Any]] = {}  # written by the link's thread only
        self.link = Link(
            "console",
            endpoint,
            client_id,
            [f"{prefix}/+/cmd/result", f"{prefix}/+/health"],
            self._message,
        )

    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        self.link.stop()

    def command(self, conn: Any, user: str, site: str, name: str, args: dict[str, Any]) -> Outgoing:
        """Sign a command and record it inside the caller's transaction; :meth:`post` it once
        that committed, so a result can never arrive for a command the database lacks."""
        payload = sign_command(self._key, site, name, args)
        command_id = str(json.loads(payload)["id"])
        conn.execute(
            "INSERT INTO commands (id, site_id, name, args, officer, issued_at) VALUES "
            "(?, ?, ?, ?, ?, ?)",
            (command_id, site, name, json.dumps(args, sort_keys=True), user, rfc3339(time.time())),
        )
        return Outgoing(command_id, site, payload)

    def post(self, command: Outgoing) -> None:
        """Queue it on the link: QoS 1, never retained, sent while the link is up."""
        self.link.publish(Topics(self._prefix, command.site).cmd, command.payload)

    # --- on the link's thread -------------------------------------------------------------

    def _message(self, topic: str, payload: bytes) -> None:
        rest = topic.removeprefix(f"{self._prefix}/")
        site, _, kind = rest.partition("/")
        if not SITE_ID.fullmatch(site) or rest == topic:
            return
        try:
            if kind == "cmd/result":
                self._result(site, payload)
            elif kind == "health" and payload:
                self._health(site, payload)
        except WireError as exc:
            log.warning("site %s: refused a %s message: %s", site, kind, exc)

    def _result(self, site: str, payload: bytes) -> None:
        doc = load_object(payload, MAX_RESULT_BYTES, "a command result")
        command_id, ok, reason, data = (
            doc.get("id"),
            doc.get("ok"),
            doc.get("reason", ""),
            doc.get("data", {}),
        )
        if not isinstance(command_id, str) or not UUID.fullmatch(command_id):
            return  # id null: the box refused something unsigned (docs/commands.md)
        if not isinstance(ok, bool) or not isinstance(reason, str) or not isinstance(data, dict):
            raise WireError("bad_field", "a command result's ok, reason or data")
        with self._db.tx() as conn:
            row = conn.execute(
                "SELECT name, result_at FROM commands WHERE id = ? AND site_id = ?",
                (command_id, site),
            ).fetchone()
            first = row is not None and row[1] is None  # else a duplicate delivery, or another
            if first:  # console recorded it: the first stays
                conn.execute(
                    "UPDATE commands SET result_at = ?, ok = ?, reason = ?, data = ? WHERE id = ?",
                    (
                        rfc3339(time.time()),
                        int(ok),
                        escape(reason[:MAX_TEXT]),
                        json.dumps(data)[:2048],
                        command_id,
                    ),
                )
                audit.append(
                    conn,
                    f"box:{site}",
                    "command_result",
                    site,
                    command_id,
                    {"command": row[0], "ok": ok, "reason": escape(reason[:MAX_TEXT])},
                )
        if row is None:
            return  # not a command of this centre's consoles to this site
        if first:
            log.info(
                "site %s answered command %s (%s): %s",
                site,
                command_id,
                row[0],
                "ok" if ok else escape(reason[:MAX_TEXT]),
            )
        self._on_result(site, command_id)  # outside the transaction: it reads the database

    def _health(self, site: str, payload: bytes) -> None:
        if site not in self.health and len(self.health) >= MAX_SITES:
            return
        health = parse_health(load_object(payload, MAX_HEALTH_BYTES, "a health message"))
        self.health[site] = health
        self._on_health(site, health)


def parse_health(doc: dict[str, object]) -> dict[str, Any]:
    """The fields of a box's health (docs/protocol.md) that the schools board shows, each
    checked for its type; anything else is dropped."""

    def text(value: object) -> str:
        return escape(value[:MAX_TEXT]) if isinstance(value, str) else ""

    def number(value: object) -> float | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else None  # type: ignore[arg-type]

    def states(value: object) -> dict[str, str]:
        if not isinstance(value, dict):
            return {}
        return {
            text(k): text(v.get("state"))
            for k, v in list(value.items())[:64]
            if isinstance(v, dict)
        }

    outbox = doc.get("outbox")
    at = doc.get("at")
    return {
        "at": at if parse_rfc3339(at) is not None else None,
        "version": text(doc.get("version")),
        "uptime_s": number(doc.get("uptime_s")),
        "clock_synced": doc.get("clock_synced") is True,
        "disk_free_mb": number(doc.get("disk_free_mb")),
        "cpu_temp_c": number(doc.get("cpu_temp_c")),
        "outbox": {k: number(outbox.get(k)) for k in ("alarm", "clip", "live", "unconfirmed")}
        if isinstance(outbox, dict)
        else {},
        "cameras": states(doc.get("cameras")),
        "buttons": states(doc.get("buttons")),
        "indicator": text(doc.get("indicator")),
        "test_mode_until": doc.get("test_mode_until")
        if parse_rfc3339(doc.get("test_mode_until")) is not None
        else None,
    }
