"""The console's video URLs: an alarm's clips (MP4 to play, originals to download), live view
and a fetch of recorded video; each added to the routes with the role it needs.

- ``GET /media/clips/{site}/{event}/{camera}.mp4`` (operator): the clip, remuxed for the
  browser;
- ``GET /media/clips/{site}/{event}/{camera}.ts`` or ``.verify.json`` (operator): the signed
  original and its verdict, as downloads (audited);
- ``POST /api/sites/{site}/live`` (operator): a signed ``live`` command (audited); returns the
  stream's URL, ``GET /media/live/{site}/{session}/{camera}`` (live.py);
- ``POST /api/sites/{site}/fetch`` (supervisor): a signed ``fetch`` of recorded video (audited).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from agent.centre.console import audit
from agent.centre.console.accounts import Session
from agent.centre.console.actions import ActionError, Desk
from agent.centre.console.database import Database
from agent.centre.console.live import follow
from agent.centre.console.media import file_response, mp4
from agent.centre.console.remux import RemuxError
from agent.centre.console.routes import OPERATOR, SUPERVISOR, Routes
from agent.centre.console.server import Request, Response
from agent.clock import rfc3339
from agent.delivery.protocol import ITEM_ID

MAX_LIVE_S = 600
MAX_FETCH_S = 3600

_SITE, _CAMERA = r"(?P<site>[a-z0-9-]{1,63})", r"(?P<camera>[a-z0-9][a-z0-9_-]{0,62})"
_CLIP = r"(?P<event>(?:fetch-)?[0-9a-f-]{36})"
_SESSION = r"(?P<session>live-[0-9a-f-]{36}|always)"


class Video:
    def __init__(self, store: Path, cache: Path, db: Database, desk: Desk, routes: Routes) -> None:
        self._store, self._cache, self._db, self._desk = store, cache, db, desk
        self._stopping = routes.stopping
        routes.add("GET", f"/media/clips/{_SITE}/{_CLIP}/{_CAMERA}\\.mp4", OPERATOR, self._mp4)
        routes.add(
            "GET",
            f"/media/clips/{_SITE}/{_CLIP}/{_CAMERA}\\.(?P<kind>ts|verify\\.json)",
            OPERATOR,
            self._original,
        )
        routes.add("POST", f"/api/sites/{_SITE}/live", OPERATOR, self._live)
        routes.add("GET", f"/media/live/{_SITE}/{_SESSION}/{_CAMERA}", OPERATOR, self._stream)
        routes.add("POST", f"/api/sites/{_SITE}/fetch", SUPERVISOR, self._fetch)

    def _clip(self, m: dict[str, str]) -> Path:
        path = self._store / m["site"] / m["event"] / f"{m['camera']}.ts"
        if not path.is_file():
            raise ActionError(404, "this clip has not arrived (yet)")
        return path

    def _mp4(self, req: Request, _who: Session, m: dict[str, str]) -> Response:
        self._clip(m)
        try:
            path = mp4(self._store, self._cache, m["site"], m["event"], m["camera"])
        except RemuxError as exc:
            raise ActionError(
                422, f"this clip cannot be played ({exc}); download the original"
            ) from None
        return file_response(req, path, "video/mp4")

    def _original(self, req: Request, who: Session, m: dict[str, str]) -> Response:
        path = self._clip(m)
        if m["kind"] != "ts":
            path = path.with_name(f"{m['camera']}.verify.json")
        audit.record(self._db, who.user, "download", m["site"], f"{m['event']}/{path.name}")
        return file_response(
            req,
            path,
            "application/octet-stream" if m["kind"] == "ts" else "application/json",
            download=f"{m['site']}_{m['event']}_{path.name}",
        )

    def _live(self, req: Request, who: Session, m: dict[str, str]) -> Response:
        doc = req.json()
        camera, seconds = doc.get("camera_id"), doc.get("seconds", 120)
        if not isinstance(camera, str) or not ITEM_ID.fullmatch(camera):
            raise ActionError(400, "choose a camera")
        if (
            not isinstance(seconds, int)
            or isinstance(seconds, bool)
            or not (1 <= seconds <= MAX_LIVE_S)
        ):
            raise ActionError(400, f"live view lasts 1 to {MAX_LIVE_S} seconds")
        command = self._desk.command(
            who, m["site"], "live", {"camera_id": camera, "seconds": seconds}
        )
        session = f"live-{command}"  # the box names the session after the command
        return Response.json(
            {"command_id": command, "stream": f"/media/live/{m['site']}/{session}/{camera}"}
        )

    def _stream(self, _req: Request, _who: Session, m: dict[str, str]) -> Response:
        folder = self._store / m["site"] / "live" / m["session"]
        return Response(
            200,
            content_type="application/octet-stream",
            chunks=follow(folder, m["camera"], self._stopping),
        )

    def _fetch(self, req: Request, who: Session, m: dict[str, str]) -> Response:
        doc = req.json()
        camera, start, end = doc.get("camera_id"), _time(doc.get("from")), _time(doc.get("to"))
        if not isinstance(camera, str) or not ITEM_ID.fullmatch(camera):
            raise ActionError(400, "choose a camera")
        if not 0 < end - start <= MAX_FETCH_S or end > time.time() + 60:
            raise ActionError(400, "choose a past window of at most an hour")
        command = self._desk.command(
            who,
            m["site"],
            "fetch",
            {"camera_id": camera, "from": rfc3339(start), "to": rfc3339(end)},
        )
        return Response.json({"command_id": command, "clip_id": f"fetch-{command}"})


def _time(value: object) -> float:
    if not isinstance(value, str):
        raise ActionError(400, "give the window's times")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ActionError(400, f"not a time: {value[:40]!r}") from None
