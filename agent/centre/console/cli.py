"""``edge-agent console`` and ``edge-agent console user add``: the parser and the commands.

Kept here so agent/cli.py only hands the sub-command over.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from pathlib import Path

from agent.errors import AgentError

log = logging.getLogger("agent.console")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edge-agent-console"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("console", help="the operators' web console (alarms, schools, video)")
    p.add_argument(
        "--store",
        type=Path,
        default=Path("centre"),
        help="the receiver's store: its ledger and clips (default ./centre)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the console's own database: users, incidents, audit log (default "
        "~/.local/share/edge-agent-console); not the receiver's store",
    )
    p.add_argument(
        "--ledger",
        default=None,
        metavar="URL",
        help="the receivers' postgresql:// ledger (default: SQLite in --store)",
    )
    p.add_argument(
        "--database",
        default=None,
        metavar="URL",
        help="postgresql:// shared by several consoles: users, incidents, audit log "
        "(default: SQLite in --data)",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:8443",
        help="HOST:PORT (default "
        "127.0.0.1:8443); any other address than loopback needs --https-cert",
    )
    p.add_argument("--https-cert", type=Path, default=None, help="the console's certificate")
    p.add_argument("--https-key", type=Path, default=None, help="its private key")
    p.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="mqtts://HOST:PORT, the centre listener (docs/broker.md)",
    )
    p.add_argument("--tls-ca", type=Path, default=None)
    p.add_argument(
        "--tls-cert", type=Path, default=None, help="the centre's client certificate (CN centre)"
    )
    p.add_argument("--tls-key", type=Path, default=None)
    p.add_argument("--topic-prefix", default="schools")
    p.add_argument(
        "--client-id", default="edge-console", help="the console's MQTT session (one per console)"
    )
    p.add_argument(
        "--key",
        type=Path,
        default=None,
        help="the centre's signing key (default ~/.config/edge-agent/centre.key)",
    )
    p.add_argument("--timezone", default="Asia/Almaty", help="times are shown in this zone")
    p.add_argument(
        "--escalate",
        default="30,60",
        help="seconds unacknowledged before an alarm escalates (default 30,60)",
    )
    p.add_argument(
        "--schools",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML: each site id's school name, address, district and lat/lon "
        '(docs/console.md, "The schools file"); without it sites show by id',
    )
    p.add_argument(
        "--map-tiles",
        default=None,
        metavar="URL",
        help="an XYZ tile template such as https://tiles.example/{z}/{x}/{y}.png "
        "for the schools' map; without it the page draws a plan (no tiles, no "
        "request anywhere)",
    )
    p.add_argument(
        "--map-attribution",
        default="",
        metavar="TEXT",
        help="shown on the map, as the tiles' licence asks (e.g. '(c) OpenStreetMap contributors')",
    )
    p.set_defaults(func=cmd_console)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    u = actions.add_parser("user", help="add an officer (the first supervisor, say)")
    u.add_argument("verb", choices=["add"])
    u.add_argument("name")
    u.add_argument("--role", choices=["operator", "supervisor"], default="operator")
    u.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input instead of asking",
    )


def cmd_console(args: argparse.Namespace) -> int:
    from agent.centre.console.database import open_database

    data = args.data or default_data_dir()
    if args.action == "user":
        from agent.centre.console.accounts import add_user

        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                raise AgentError("the two passwords differ; nothing changed")
        db = open_database(data, args.database)
        try:
            add_user(db, args.name, args.role, password, actor=f"cli:{getpass.getuser()}")
        finally:
            db.close()
        print(f"user {args.name} ({args.role}) added to {data / 'console.db'}")
        return 0
    return _serve(args, data)


def _serve(args: argparse.Namespace, data: Path) -> int:
    from agent.centre import commander
    from agent.centre.console.app import Console, Options
    from agent.centre.console.routes import Settings
    from agent.centre.console.schools import load_schools, tile_origin
    from agent.centre.link import Endpoint

    host, _, port = args.listen.rpartition(":")
    try:
        escalate = tuple(int(s) for s in args.escalate.split(","))
        listen = (host.strip("[]"), int(port))
    except ValueError:
        raise AgentError("--listen is HOST:PORT and --escalate is seconds like 30,60") from None
    _check_zone(args.timezone)
    if args.map_tiles is not None:
        tile_origin(args.map_tiles)
        if args.https_cert is not None and args.map_tiles.startswith("http://"):
            log.warning(
                "the console is HTTPS and its map tiles plain HTTP: browsers upgrade "
                "or block such images; give an https:// --map-tiles"
            )
    schools = load_schools(args.schools) if args.schools is not None else ()
    console = Console(
        Options(
            store=args.store,
            data=data,
            endpoint=Endpoint.parse(args.broker, args.tls_ca, args.tls_cert, args.tls_key),
            key_file=args.key or commander.default_key_dir() / commander.KEY_NAME,
            topic_prefix=args.topic_prefix,
            client_id=args.client_id,
            listen=listen,
            https_cert=args.https_cert,
            https_key=args.https_key,
            settings=Settings(
                args.timezone, escalate, schools, args.map_tiles, args.map_attribution[:200]
            ),
            ledger_url=args.ledger,
            database_url=args.database,
        )
    )
    from agent.centre.cli import until_signal

    console.start()
    print(f"console: {console.url}", flush=True)
    try:
        return until_signal(lambda stop: stop.wait())
    finally:
        console.stop()


def _check_zone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AgentError(
            f"unknown time zone {name!r}: use a name like Asia/Almaty "
            "(install tzdata if none is known)"
        ) from None
