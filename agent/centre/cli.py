"""``edge-agent central``: the centre's reference receiver, its status, and signed commands to
boxes. Kept here so agent/cli.py only hands the sub-command over (as for ``console``)."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.commands.args import MAX_FETCH_SPAN_S, MAX_LIVE_S
from agent.errors import AgentError


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("central", help="the centre's reference receiver, and commands to boxes")
    p.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="mqtts://HOST:PORT (8883 if no port) or, to a loopback broker, mqtt://",
    )
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        help="the CA that signed the broker's certificate (default: the system's)",
    )
    p.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="the centre's client certificate (CN centre, docs/broker.md)",
    )
    p.add_argument("--tls-key", type=Path, default=None, help="its private key")
    p.add_argument("--topic-prefix", default="schools")
    p.add_argument(
        "--store",
        type=Path,
        default=Path("centre"),
        help="where alarms and clips go (default ./centre)",
    )
    p.add_argument("--client-id", default=None, help="persistent session id (default per host)")
    p.add_argument(
        "--key",
        type=Path,
        default=None,
        help="the centre's Ed25519 signing key, for commands and keygen (default "
        "~/.config/edge-agent/centre.key); never in the receiver's store",
    )
    p.add_argument(
        "--memory-mb",
        type=int,
        default=768,
        help="the receiver's memory for video in transit, all sites (default 768)",
    )
    p.add_argument(
        "--ledger",
        default=None,
        metavar="URL",
        help="postgresql://… shared by several receivers and consoles (default: SQLite in --store)",
    )
    p.add_argument(
        "--group-commit",
        type=int,
        default=256,
        metavar="N",
        help="store at most N alarms that arrived together in one transaction (one "
        "fsync); 1 = one fsync per alarm (default 256)",
    )
    p.add_argument(
        "--site-quota-gb",
        type=float,
        default=100.0,
        help="disk for one site's video (default 100); beyond it, refused",
    )
    p.add_argument(
        "--min-free-gb",
        type=float,
        default=10.0,
        help="free disk kept for alarms; video is refused below it (default 10)",
    )
    p.set_defaults(func=cmd_central)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    a = actions.add_parser("ack", help="acknowledge an alarm: the box shows 'help is coming'")
    a.add_argument("event_id")
    a.add_argument("--site", default=None, help="the alarm's site, if several sent that id")
    a = actions.add_parser("ping", help="ask a box to answer")
    a.add_argument("site")
    a = actions.add_parser("live", help="stream a camera live; the receiver writes a growing file")
    a.add_argument("site")
    a.add_argument("camera")
    a.add_argument("--seconds", type=int, default=60, help=f"1 to {MAX_LIVE_S} (default 60)")
    a = actions.add_parser("fetch", help="pull recorded video from the box's buffer")
    a.add_argument("site")
    a.add_argument("camera")
    a.add_argument(
        "--from", dest="start", required=True, help="RFC 3339, e.g. 2026-11-25T08:00:00Z"
    )
    a.add_argument(
        "--to",
        dest="end",
        required=True,
        help=f"RFC 3339; at most {MAX_FETCH_SPAN_S} s after --from",
    )
    a = actions.add_parser("keygen", help="make the centre's key pair (where --key says)")
    a = actions.add_parser(
        "status",
        help="each site's state, missing alarms (seq gaps), what "
        "the centre refused, and when the receiver lost the broker",
    )


def until_signal(body: Callable[[threading.Event], object]) -> int:
    """Run ``body(stop)``; SIGINT or SIGTERM sets ``stop`` (the receiver, the console, the demo)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    body(stop)
    return 0


def centre_status(store: Path, ledger_url: str | None = None) -> str:
    """What the operator reads: every text from a box escaped (agent/logs.py), so no escape
    sequence or control character reaches the terminal."""
    from agent.centre.ledgers import open_ledger
    from agent.logs import escape

    ledger = open_ledger(store, ledger_url)
    try:
        lines = [
            f"site {site:<20} {state:<8} since {since}" for site, state, since in ledger.sites()
        ]
        for site, seqs in ledger.gaps().items():
            lines.append(
                f"MISSING site {site}: alarm seq {', '.join(map(str, seqs[:20]))}"
                + (" …" if len(seqs) > 20 else "")
            )
        for link in ledger.links():
            lines.append(
                f"receiver {link.receiver} {link.link}: "
                + (
                    f"connected since {link.since}"
                    if link.up
                    else f"NOT connected since {link.since} ({link.last_error})"
                )
                + (
                    f"; lost the broker {link.outages} times, last at {link.lost_at}, "
                    f"back at {link.regained_at}"
                    if link.outages
                    else ""
                )
            )
        for report in ledger.reports(newest=20):
            lines.append(f"REPORT {report.at} site {report.site_id} {report.what}: {report.detail}")
        return "\n".join(escape(line) for line in lines) or "no sites seen yet"
    finally:
        ledger.close()


def _ms(text: str) -> str:
    """Any RFC 3339 time as the commands' exact form, UTC with milliseconds."""
    from datetime import datetime

    from agent.clock import rfc3339

    try:
        return rfc3339(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError as exc:
        raise AgentError(f"not a time: {text!r}; write it like 2026-11-25T08:00:00Z") from exc


def cmd_central(args: argparse.Namespace) -> int:
    from agent.centre import commander
    from agent.centre import service as central
    from agent.centre.intake import GiB, Limits
    from agent.centre.link import Endpoint

    key = args.key or commander.default_key_dir() / commander.KEY_NAME

    def endpoint() -> Endpoint:
        return Endpoint.parse(args.broker, args.tls_ca, args.tls_cert, args.tls_key)

    match args.action:
        case None:
            limits = Limits.for_memory(
                args.memory_mb,
                site_quota_bytes=int(args.site_quota_gb * GiB),
                min_free_bytes=int(args.min_free_gb * GiB),
            )
            if args.group_commit < 1:
                raise AgentError("--group-commit is at least 1")
            return until_signal(
                lambda stop: central.run_receiver(
                    endpoint(),
                    args.topic_prefix,
                    args.store,
                    args.client_id,
                    stop,
                    limits=limits,
                    group_max=args.group_commit,
                    ledger_url=args.ledger,
                )
            )
        case "status":
            print(centre_status(args.store, args.ledger))
            return 0
        case "keygen":
            from agent.commands.keys import generate_keypair

            if key.name != commander.KEY_NAME:
                raise AgentError(
                    f"keygen writes {commander.KEY_NAME} and centre.pub into a "
                    f"folder: give --key FOLDER/{commander.KEY_NAME}"
                )
            if key.resolve().is_relative_to(args.store.resolve()):
                raise AgentError(
                    f"{key} is inside the receiver's store {args.store}: keep the "
                    "signing key with the commanding user (the default --key)"
                )
            private, public = generate_keypair(key.parent)
            print(
                f"private key {private} (keep it with the commanding user, mode 0600)\n"
                f"public key  {public} (give it to each box: commands.public_key_file)"
            )
            return 0
        case "ack":
            site = commander.site_of_event(args.store, args.event_id, args.site)
            cmd_args: dict[str, Any] = {"event_id": args.event_id}
        case "ping":
            site, cmd_args = args.site, {}
        case "live":
            site, cmd_args = args.site, {"camera_id": args.camera, "seconds": args.seconds}
        case "fetch":
            site, cmd_args = (
                args.site,
                {"camera_id": args.camera, "from": _ms(args.start), "to": _ms(args.end)},
            )
    result = commander.send_command(endpoint(), args.topic_prefix, site, key, args.action, cmd_args)
    print(json.dumps(result, ensure_ascii=False))
    return 0 if result.get("ok") else 1
