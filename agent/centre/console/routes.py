"""The console's URLs: who may reach each one, and what it does.

Every URL but the login page and its static files needs a live session; each has the role it
needs (``operator``: any officer; ``supervisor``), checked here in one table before anything
runs, so an operator gets 403 from a supervisor's URL whatever it would do. A change (POST)
must also come from this origin (``Origin``), as JSON, with the session's CSRF token in
``X-CSRF-Token``; the cookie is ``SameSite=Strict`` besides.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.centre.console import accounts, audit
from agent.centre.console.accounts import Session
from agent.centre.console.actions import ActionError, Desk
from agent.centre.console.database import Database
from agent.centre.console.feed import Feed
from agent.centre.console.hub import Hub
from agent.centre.console.schools import School
from agent.centre.console.server import COOKIE, Request, Response

STATIC = Path(__file__).with_name("static")
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
PING_S = 15.0

PUBLIC, OPERATOR, SUPERVISOR = "public", "operator", "supervisor"


@dataclass(frozen=True, slots=True)
class Settings:
    timezone: str = "Asia/Almaty"
    escalate_s: tuple[int, ...] = (30, 60)
    schools: tuple[School, ...] = ()  # --schools: names, addresses, places (schools.py)
    map_tiles: str | None = None  # --map-tiles: an XYZ template, checked by tile_origin
    map_attribution: str = ""  # shown on the map: the tiles' licence may require it


Action = Callable[[Request, Session, dict[str, str]], Response]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    role: str
    action: Action


class Routes:
    def __init__(self, db: Database, desk: Desk, feed: Feed, hub: Hub, settings: Settings) -> None:
        self._db, self._desk, self._feed, self._hub = db, desk, feed, hub
        self._settings = settings
        self._static = {
            p.name: (p.read_bytes(), TYPES.get(p.suffix, "application/octet-stream"))
            for p in STATIC.rglob("*")
            if p.is_file()
        }
        self.stopping = threading.Event()  # ends the event streams
        self._routes: list[Route] = []
        site, event = r"(?P<site>[a-z0-9-]{1,63})", r"(?P<event>[0-9a-f-]{36})"
        for method, path, role, action in [
            ("GET", "/", OPERATOR, self._page("index.html")),
            ("GET", "/login", PUBLIC, self._page("login.html")),
            ("POST", "/api/login", PUBLIC, self._login),
            ("POST", "/api/logout", OPERATOR, self._logout),
            ("GET", "/api/me", OPERATOR, self._me),
            ("GET", "/api/events", OPERATOR, self._events),
            (
                "GET",
                "/api/schools",
                OPERATOR,
                lambda _r, _s, _m: Response.json(
                    {"schools": [school.as_json() for school in settings.schools]}
                ),
            ),
            (
                "GET",
                f"/api/alarms/{site}/{event}",
                OPERATOR,
                lambda _r, _s, m: Response.json(self._desk.alarm(m["site"], m["event"])),
            ),
            ("POST", f"/api/alarms/{site}/{event}/ack", OPERATOR, self._ack),
            ("POST", f"/api/alarms/{site}/{event}/close", OPERATOR, self._close),
            ("POST", f"/api/sites/{site}/ping", OPERATOR, self._ping),
            ("POST", f"/api/sites/{site}/test_mode", SUPERVISOR, self._test_mode),
            ("GET", "/api/audit", SUPERVISOR, self._audit),
            ("GET", "/api/users", SUPERVISOR, self._users),
            ("POST", "/api/users", SUPERVISOR, self._add_user),
        ]:
            self.add(method, path, role, action)

    def add(self, method: str, path: str, role: str, action: Action) -> None:
        """Another URL (video.py adds its own); ``path`` is a regular expression."""
        self._routes.append(Route(method, re.compile(path), role, action))

    def __call__(self, req: Request) -> Response:
        if req.method == "GET" and req.path.startswith("/static/"):
            found = self._static.get(req.path.removeprefix("/static/"))
            if found is None:
                return Response.error(404, "no such file")
            return Response(200, found[0], found[1], {"Cache-Control": "no-cache"})
        for route in self._routes:
            match = route.pattern.fullmatch(req.path)
            if match and route.method == req.method:
                return self._guarded(route, req, match.groupdict())
        return Response.error(404, "no such page")

    def _guarded(self, route: Route, req: Request, params: dict[str, str]) -> Response:
        if req.method == "POST":
            if req.headers.get("origin") != self._origin(req):
                return Response.error(403, "a change must come from the console's own page")
            if not req.headers.get("content-type", "").startswith("application/json"):
                return Response.error(415, "send JSON")
        who = accounts.session(self._db, req.token) if route.role != PUBLIC else None
        if route.role != PUBLIC:
            if who is None:
                if not req.path.startswith("/api/"):  # a page: to the login page
                    return Response(303, headers={"Location": "/login"})
                return Response.error(401, "log in first")
            if route.role == SUPERVISOR and not who.supervisor:
                return Response.error(403, "a supervisor's action: ask the duty supervisor")
            if req.method == "POST" and not hmac.compare_digest(
                req.headers.get("x-csrf-token", ""), who.csrf
            ):
                return Response.error(403, "the page is out of date: reload it")
        try:
            return route.action(req, who or Session("", "", ""), params)
        except ActionError as exc:
            return Response.error(exc.status, str(exc))
        except ValueError as exc:
            return Response.error(400, str(exc))

    @staticmethod
    def _origin(req: Request) -> str:
        return f"{'https' if req.secure else 'http'}://{req.headers.get('host', '')}"

    # --- pages and sessions -------------------------------------------------------------------

    def _page(self, name: str) -> Action:
        def page(_req: Request, _who: Session, _m: dict[str, str]) -> Response:
            body, ctype = self._static[name]
            return Response(200, body, ctype)

        return page

    def _login(self, req: Request, _who: Session, _m: dict[str, str]) -> Response:
        doc = req.json()
        name, password = doc.get("user"), doc.get("password")
        if not isinstance(name, str) or not isinstance(password, str):
            raise ValueError("give a user name and a password")
        got = accounts.login(self._db, name[:64], password, req.client)
        if got is None:
            return Response.error(
                401, "wrong name or password (after 5 failures the name is locked for 15 minutes)"
            )
        token, who = got
        cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Secure"
        return Response(
            200,
            json.dumps({"user": who.user, "role": who.role}).encode(),
            headers={"Set-Cookie": cookie},
        )

    def _logout(self, req: Request, who: Session, _m: dict[str, str]) -> Response:
        accounts.logout(self._db, req.token, who.user)
        return Response(
            200,
            b"{}",
            headers={
                "Set-Cookie": f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=0"
            },
        )

    def _me(self, _req: Request, who: Session, _m: dict[str, str]) -> Response:
        return Response.json(
            {
                "user": who.user,
                "role": who.role,
                "csrf": who.csrf,
                "timezone": self._settings.timezone,
                "escalate_s": list(self._settings.escalate_s),
                "map": {
                    "tiles": self._settings.map_tiles,
                    "attribution": self._settings.map_attribution,
                },
            }
        )

    def _events(self, req: Request, _who: Session, _m: dict[str, str]) -> Response:
        """Server-Sent Events: a snapshot, then every change as it happens."""
        token = req.token

        def stream(write: Callable[[bytes], None]) -> None:
            sub = self._hub.subscribe()  # before the snapshot, so nothing falls in between
            try:
                write(b"retry: 1000\n\n" + _sse("snapshot", self._feed.snapshot()))
                quiet = 0.0
                while not self.stopping.is_set():
                    event = sub.get(timeout=1.0)
                    if sub.overflowed:
                        write(_sse("resync", {}))  # the browser reconnects: a new snapshot
                        return
                    if event is not None:
                        write(_sse(event.kind, event.data))
                        continue
                    quiet += 1.0
                    if quiet >= PING_S:  # a dead browser is noticed; a logged-out one ends
                        quiet = 0.0
                        if accounts.session(self._db, token) is None:
                            write(_sse("logout", {}))
                            return
                        write(b": ping\n\n")
            finally:
                self._hub.unsubscribe(sub)

        return Response(200, content_type="text/event-stream; charset=utf-8", stream=stream)

    # --- alarms and schools -------------------------------------------------------------------

    def _ack(self, req: Request, who: Session, m: dict[str, str]) -> Response:
        return Response.json(self._desk.ack(who, m["site"], m["event"], req.json().get("reason")))

    def _close(self, req: Request, who: Session, m: dict[str, str]) -> Response:
        return Response.json(self._desk.close(who, m["site"], m["event"], req.json().get("note")))

    def _ping(self, _req: Request, who: Session, m: dict[str, str]) -> Response:
        return Response.json({"command_id": self._desk.command(who, m["site"], "ping", {})})

    def _test_mode(self, req: Request, who: Session, m: dict[str, str]) -> Response:
        doc = req.json()
        return Response.json(
            {"command_id": self._desk.test_mode(who, m["site"], doc.get("on"), doc.get("minutes"))}
        )

    # --- supervisors --------------------------------------------------------------------------

    def _audit(self, _req: Request, _who: Session, _m: dict[str, str]) -> Response:
        verdict = audit.verify(self._db)
        return Response.json(
            {
                "verdict": {
                    "ok": verdict.ok,
                    "entries": verdict.entries,
                    "head": verdict.head,
                    "problem": verdict.problem,
                },
                "entries": [
                    {
                        "id": e.id,
                        "at": e.at,
                        "actor": e.actor,
                        "action": e.action,
                        "site_id": e.site_id,
                        "target": e.target,
                        "detail": e.detail,
                        "hash": e.hash,
                    }
                    for e in audit.entries(self._db)
                ],
            }
        )

    def _users(self, _req: Request, _who: Session, _m: dict[str, str]) -> Response:
        return Response.json(
            [
                {"name": n, "role": r, "created_at": c, "disabled": d}
                for n, r, c, d in accounts.users(self._db)
            ]
        )

    def _add_user(self, req: Request, who: Session, _m: dict[str, str]) -> Response:
        doc = req.json()
        name, role, password = doc.get("name"), doc.get("role"), doc.get("password")
        if not all(isinstance(v, str) for v in (name, role, password)):
            raise ValueError("give a name, a role and a password")
        try:
            accounts.add_user(self._db, str(name), str(role), str(password), who.user)
        except accounts.AccountError as exc:
            raise ActionError(400, str(exc)) from None
        return Response.json({"name": name, "role": role}, 201)


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
