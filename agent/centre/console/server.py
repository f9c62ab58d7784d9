"""HTTP plumbing for the console: the standard library's threading server, hardened.

Why not a framework: the console serves a few dozen officers, one page, a JSON API, an event
stream and video files. ``http.server.ThreadingHTTPServer`` does that with no dependency to
vet or to keep patched at a police centre, and threads fit the rest of the code base (the
receiver, the feed and the MQTT link are threads too; docs/architecture.md). A thread per
connection is bounded (MAX_CONNECTIONS), requests are bounded (MAX_BODY), and idle sockets time
out. TLS is the server socket's (``ssl``); plain HTTP only on a loopback address.

Every response carries the security headers (a strict Content-Security-Policy: no inline
script, nothing from another origin but the map's tiles when a tile server is configured), and
API responses are never cached.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("agent.console")

MAX_CONNECTIONS = 128
MAX_BODY = 16 * 1024
COOKIE = "edge_console"


def security_headers(img_origins: tuple[str, ...] = ()) -> dict[str, str]:
    """The headers of every response; ``img_origins``: where else images may come from (the
    map's tile server, when one is configured: schools.py checks its origin)."""
    img = " ".join(("'self' data: blob:", *img_origins))
    return {
        "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {img}; media-src 'self' blob:; connect-src 'self'; "
        "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    client: str
    secure: bool

    @property
    def token(self) -> str:
        try:
            cookie = SimpleCookie(self.headers.get("cookie", ""))
        except CookieError:
            return ""
        morsel = cookie.get(COOKIE)
        return morsel.value if morsel is not None else ""

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; a malformed one is the caller's 400."""
        try:
            doc = json.loads(self.body or b"{}")
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise ValueError("the request's body is not a JSON object")
        return doc


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Callable[[Callable[[bytes], None]], None] | None = None  # writes until done
    chunks: Iterator[bytes] | None = None  # a body of unknown length, sent chunked

    @classmethod
    def json(cls, doc: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(doc, ensure_ascii=False).encode())

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.json({"error": message}, status)


Handler = Callable[[Request], Response]


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        app: Handler,
        tls: ssl.SSLContext | None = None,
        img_origins: tuple[str, ...] = (),
    ) -> None:
        self.app, self.tls = app, tls
        self.security_headers = security_headers(img_origins)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.tls is not None:  # the handshake runs on the connection's thread
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning(
                "console: %d connections open; refusing one from %s",
                MAX_CONNECTIONS,
                client_address[0],
            )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edge-console"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection is closed
    server: ConsoleServer

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (OSError, ssl.SSLError):
                self.close_connection = True
                raise

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._send(Response.error(405, "HEAD is not served"))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("console %s: " + format, self.client_address[0], *args)

    def _serve(self) -> None:
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            self.close_connection = True
            self._send(Response.error(413, f"a request body is at most {MAX_BODY} bytes"))
            return
        parts = urlsplit(self.path)
        request = Request(
            self.command,
            unquote(parts.path),
            parse_qs(parts.query),
            {k.lower(): v for k, v in self.headers.items()},
            self.rfile.read(int(length)),
            self.client_address[0],
            self.server.tls is not None,
        )
        try:
            response = self.server.app(request)
        except Exception:
            log.exception("console: %s %s failed", self.command, parts.path)
            response = Response.error(500, "the console failed on this request; see its log")
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        headers = {
            **self.server.security_headers,
            "Content-Type": response.content_type,
            "Cache-Control": "no-store",
            **response.headers,
        }
        if response.chunks is not None:
            headers["Transfer-Encoding"] = "chunked"
        elif response.stream is None:
            headers["Content-Length"] = str(len(response.body))
        elif "Content-Length" not in headers:  # an event stream: it ends with the connection
            headers["Connection"] = "close"
            self.close_connection = True
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            if response.stream is not None:
                response.stream(self._write)
            elif response.chunks is not None:
                try:
                    for chunk in response.chunks:
                        if chunk:
                            self._write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self._write(b"0\r\n\r\n")
                finally:
                    close = getattr(response.chunks, "close", None)
                    if close is not None:  # a generator: its files close now
                        close()
            else:
                self.wfile.write(response.body)
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True  # the browser went away: nothing to tell it

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
