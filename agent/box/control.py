"""The local control socket: how ``edge-agent status`` and ``simulate`` talk to the daemon.

A Unix stream socket in the storage directory, owner-only (0600 in a 0750 directory), so only
the agent's own user and root can use it: no network exposure, no password to manage. One JSON
request line in, one JSON reply line out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import AgentError, ControlError
from agent.supervision import Supervisor, Worker

log = logging.getLogger("agent.control")

Handler = Callable[[dict[str, Any]], dict[str, Any]]

MAX_REQUEST = 64 * 1024
ACCEPT_TICK_S = 0.5  # the control thread beats at least this often while idle


def socket_path(storage: Path) -> Path:
    return storage / "control.sock"


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._sock: socket.socket | None = None
        self._worker: Worker | None = None

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Listen at once (``status`` works as soon as this returns); the ``control`` thread
        runs under ``supervisor`` (agent/supervision.py)."""
        self._sock = self._listen()
        self._worker = (supervisor or Supervisor()).spawn("control", self._serve)

    def _listen(self) -> socket.socket:
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is created 0600: no window where others may connect
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(8)
        sock.settimeout(ACCEPT_TICK_S)
        return sock

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):  # on Linux close() alone does not wake accept()
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._worker is not None:
            self._worker.stop()
        with contextlib.suppress(OSError):  # a failing disk must not fail the shutdown
            self.path.unlink(missing_ok=True)

    def _serve(self, worker: Worker) -> None:
        """The thread's body. After a crash it runs again, listening anew if the socket is
        what failed (its file removed by hand, say)."""
        if self._sock is None or self._sock.fileno() < 0 or not self.path.exists():
            self._sock = self._listen()
        sock = self._sock
        while not worker.stopping.is_set():
            worker.beat()
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if worker.stopping.is_set():
                    return
                raise
            conn.settimeout(None)
            threading.Thread(
                target=self._one, args=(conn,), name="control-conn", daemon=True
            ).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                reply = self._handler(_read_request(conn))
            except AgentError as exc:
                reply = {"ok": False, "error": str(exc)}
            except (ValueError, OSError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            except Exception as exc:  # a bug in one answer: say so, log it once, keep serving
                log.exception("control request failed")
                reply = {"ok": False, "error": f"the agent failed to answer: {exc!r} (see its log)"}
            with contextlib.suppress(OSError):  # the client went away; nothing to tell
                conn.sendall(json.dumps(reply).encode() + b"\n")


def _read_request(conn: socket.socket) -> dict[str, Any]:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too large")
    req = json.loads(buf.split(b"\n", 1)[0])
    if not isinstance(req, dict):
        raise ValueError("request must be a JSON object")
    return req


def call(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the running daemon; ControlError says what to check if it is not up."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except FileNotFoundError as exc:
        raise ControlError(
            f"the agent is not running (no {path}); start it with "
            "'edge-agent run -c FILE' or 'systemctl start edge-agent'"
        ) from exc
    except PermissionError as exc:
        raise ControlError(
            f"no permission to use {path}: run as root or as the edge-agent user"
        ) from exc
    except OSError as exc:
        raise ControlError(f"cannot reach the agent at {path}: {exc}") from exc
    try:
        reply: dict[str, Any] = json.loads(buf)
    except ValueError as exc:
        raise ControlError(f"the agent sent an unreadable reply: {buf[:200]!r}") from exc
    return reply
