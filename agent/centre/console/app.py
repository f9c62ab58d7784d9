"""``edge-agent console``: the pieces wired together, started and stopped in order.

Threads: the HTTP server's (``console-http``, and one per browser connection), the feed
(``console-feed``: the ledger to events), the MQTT link (``link-console``: commands out,
results and health in). They meet only in the database (its own lock) and the hub (its own
lock, bounded queues).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from agent.centre.console.actions import Desk
from agent.centre.console.boxes import Boxes
from agent.centre.console.database import open_database
from agent.centre.console.feed import Feed
from agent.centre.console.hub import Hub
from agent.centre.console.records import LedgerReader
from agent.centre.console.routes import Routes, Settings
from agent.centre.console.schools import tile_origin
from agent.centre.console.server import ConsoleServer
from agent.centre.console.video import Video
from agent.centre.link import Endpoint
from agent.errors import AgentError

log = logging.getLogger("agent.console")


@dataclass(frozen=True, slots=True)
class Options:
    store: Path  # the receiver's store: its ledger and clips
    data: Path  # the console's own database (SQLite) and its video cache
    endpoint: Endpoint
    key_file: Path
    topic_prefix: str = "schools"
    client_id: str = "edge-console"
    listen: tuple[str, int] = ("127.0.0.1", 8443)
    https_cert: Path | None = None
    https_key: Path | None = None
    settings: Settings = field(default_factory=Settings)
    ledger_url: str | None = None  # the receivers' PostgreSQL ledger, instead of the store's
    database_url: str | None = None  # the consoles' shared PostgreSQL, instead of ``data``


class Console:
    """:meth:`start` (returns once it listens), :meth:`stop`; ``url`` is where it listens."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.db = open_database(options.data, options.database_url)
        self.ledger = LedgerReader.open(options.store, options.ledger_url)
        self.hub = Hub()
        self.feed = Feed(
            self.ledger, self.db, self.hub, [school.site_id for school in options.settings.schools]
        )
        self.boxes = Boxes(
            options.endpoint,
            options.topic_prefix,
            options.client_id,
            options.key_file,
            self.db,
            self._on_result,
            self.feed.on_health,
        )
        self.desk = Desk(self.db, self.ledger, self.boxes, self.hub)
        self.routes = Routes(self.db, self.desk, self.feed, self.hub, options.settings)
        self.video = Video(options.store, options.data / "cache", self.db, self.desk, self.routes)
        tiles = options.settings.map_tiles
        self.server = ConsoleServer(
            options.listen, self.routes, _tls(options), (tile_origin(tiles),) if tiles else ()
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = str(self.server.server_address[0]), self.server.server_address[1]
        scheme = "https" if self.server.tls is not None else "http"
        return f"{scheme}://{'localhost' if host == '127.0.0.1' else host}:{port}"

    def start(self) -> None:
        self.feed.start()
        self.boxes.start()
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="console-http", daemon=True
        )
        self._thread.start()
        log.info("console listening on %s (store %s)", self.url, self.options.store)

    def stop(self) -> None:
        self.routes.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.boxes.stop()
        self.feed.stop()
        self.ledger.close()
        self.db.close()

    def _on_result(self, site: str, command_id: str) -> None:
        self.desk.on_result(site, command_id)


def _tls(options: Options) -> ssl.SSLContext | None:
    """HTTPS with the given certificate; plain HTTP is allowed on a loopback address only (a
    reverse proxy on the same machine, or a test), since the session cookie is ``Secure``."""
    if options.https_cert is None or options.https_key is None:
        if not ipaddress.ip_address(options.listen[0]).is_loopback:
            raise AgentError(
                f"the console would listen on {options.listen[0]} without TLS: "
                "give --https-cert and --https-key, or listen on 127.0.0.1 "
                "behind a TLS proxy"
            )
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(options.https_cert, options.https_key)
    except (OSError, ssl.SSLError) as exc:
        raise AgentError(
            f"cannot use the HTTPS certificate ({exc}): check --https-cert and --https-key"
        ) from exc
    return context
