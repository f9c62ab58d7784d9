"""``edge-agent``: the one command technicians, the centre and the tests use.

Errors the user can act on (AgentError) print one line and exit non-zero; no traceback ever
reaches a technician. ``--debug`` shows it for developers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent import __version__, logs
from agent.box import control, walktest
from agent.commands.args import MAX_FETCH_SPAN_S, MAX_LIVE_S
from agent.config import format_report, load_config
from agent.config.model import Config
from agent.delivery.uplink.pacing import describe
from agent.errors import AgentError, ConfigError

DEFAULT_CONFIG = os.environ.get("EDGE_AGENT_CONFIG", "/etc/edge-agent/agent.yaml")

EXIT_CONFIG = 2


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        help=f"the agent's YAML file (default {DEFAULT_CONFIG})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the agent (what systemd starts)")
    _add_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate the YAML file; exit 2 listing every problem")
    _add_config(p)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("status", help="ask the running agent how it is")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("simulate", help="press or release a button of the simulated school")
    p.add_argument("action", choices=["press", "release"])
    p.add_argument("button", help="the button id from the config")
    _add_config(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("selftest", help="check config, GPIO, cameras, broker, disk and clock")
    _add_config(p)
    p.set_defaults(func=cmd_selftest)

    p = sub.add_parser("test-mode", help="walk test: alarms are marked as tests for N minutes")
    p.add_argument("state", choices=["on", "off"])
    p.add_argument(
        "--minutes", type=int, default=30, help=f"1 to {walktest.MAX_MINUTES} (default 30)"
    )
    _add_config(p)
    p.set_defaults(func=cmd_test_mode)

    p = sub.add_parser("reset-indicator", help="turn the alarm LED/buzzer off (local reset)")
    _add_config(p)
    p.set_defaults(func=cmd_reset_indicator)

    p = sub.add_parser("demo", help="a simulated school, a private broker and the centre's view")
    p.add_argument(
        "--state",
        type=Path,
        default=None,
        help="where the demo keeps its state (default: a temporary directory)",
    )
    p.add_argument("--presses", type=int, default=1, help="how many presses to show")
    p.add_argument(
        "--exit",
        action="store_true",
        help="exit after the presses (for scripts): 0 only if every alarm and clip arrived",
    )
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="a school of your own to run (default: the embedded simulated school); "
        "its mqtt and storage are the demo's",
    )
    p.set_defaults(func=cmd_demo)

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

    from agent.centre.console.cli import add_parser as add_console

    add_console(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup("debug" if args.debug else "info")
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(format_report(exc), file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as exc:
        if args.debug:
            raise
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.box.daemon import Daemon
    from agent.config import config_warnings

    cfg = _load(args)
    logs.setup("debug" if args.debug else cfg.log.level)
    for warning in config_warnings(cfg):
        logging.getLogger("agent").warning("%s", warning)
    return Daemon(cfg).run()


def cmd_check_config(args: argparse.Namespace) -> int:
    from agent.config import config_warnings

    cfg = _load(args)
    for warning in config_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{args.config}: OK (site {cfg.site.id}, {len(cfg.buttons)} buttons, "
        f"{len(cfg.cameras)} cameras)"
    )
    return 0


def _call(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any]:
    cfg = _load(args)
    reply = control.call(control.socket_path(Path(cfg.storage.path)), request)
    if not reply.get("ok"):
        raise AgentError(str(reply.get("error", "the agent refused the request")))
    return reply


def cmd_status(args: argparse.Namespace) -> int:
    status = _call(args, {"cmd": "status"})["status"]
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(format_status(status))
    return 0


def format_status(s: dict[str, Any]) -> str:
    up, box = s["uplink"], s["outbox"]
    lines = [
        f"site      {s['site_id']}  (agent {s['version']}, up {s['uptime_s']:.0f} s, "
        f"clock {'synced' if s['clock_synced'] else 'NOT synced'})",
        f"uplink    {up['state']} to {up['broker']}; centre {up['centre']}; last ACK "
        f"{up['last_ack_at'] or 'never'}, failures {up['failures']}"
        + (f"  last error: {up['last_error']}" if up["last_error"] else ""),
        f"pacing    {up['pacing']['mode']}: {describe(up['pacing'])}",
        f"outbox    alarms {box['alarm']}, control {box['control']}, live {box['live']}, "
        f"clips {box['clip']}; awaiting the centre's receipt {box['unconfirmed']}; "
        f"last seq {box['last_seq']}"
        + (f"  DISK ERROR: {box['disk_error']}" if box["disk_error"] else ""),
    ]
    lines += _dc09_lines(s.get("dc09"))
    last = s.get("last_alarm")
    lines.append(
        "last alarm "
        + (
            f"{last['kind']} {last['button_id']} at {last['at']} (seq {last['seq']})"
            if last
            else "none"
        )
    )
    for bid, b in s["buttons"].items():
        lines.append(f"button    {bid:<12} GPIO {b['pin']:<3} {b['state']:<8} {b['location']}")
    if s.get("test_mode_until"):
        lines.append(f"TEST MODE until {s['test_mode_until']}: alarms are marked as tests")
    for cid, c in s.get("cameras", {}).items():
        lines.append(f"camera    {cid:<12} {c['state']}")
    return "\n".join(lines)


def _dc09_lines(d: dict[str, Any] | None) -> list[str]:
    """The second path beside the first: its state, queue, refusals and each receiver."""
    if d is None:
        return []
    lines = [
        f"dc09      {d['path']} via {d['active']}; queue {d['queue']}, acknowledged "
        f"{d['acked']}, refused {d['refused']}; MQTT path reported {d['mqtt_path_reported']}"
    ]
    for r in d["receivers"]:
        lines.append(
            f"receiver  {r['name']}  last ACK {r['last_ack_at'] or 'never'}, "
            f"failures {r['failures']} ({r['total_failures']} in all)"
            + (f"  last error: {r['last_error']}" if r["failures"] else "")
        )
    for r in d["refused_recent"]:
        lines.append(f"REFUSED   {r['kind']} zone {r['zone']} at {r['at']}: {r['reason']}")
    return lines


def cmd_simulate(args: argparse.Namespace) -> int:
    reply = _call(args, {"cmd": "simulate", "action": args.action, "button": args.button})
    events = [e for e in reply.get("events", []) if e]
    for e in events:
        print(
            f"{e['kind']} {e['button_id']} seq={e['seq']} event_id={e['event_id']}"
            f"{'' if e['durable'] else ' (held in memory: disk error)'}"
        )
    if not events:
        print(
            f"{args.action} {args.button}: handled, no alarm (already in that state, "
            "or waiting for hold_s)"
        )
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from agent.box.selftest import format_table, run_checks

    cfg = _load(args)
    logs.setup("critical")  # the table is the output; library chatter would hide it
    checks = run_checks(cfg)
    print(format_table(checks))
    return 0 if all(c.ok for c in checks) else 1


def cmd_test_mode(args: argparse.Namespace) -> int:
    reply = _call(args, {"cmd": "test_mode", "on": args.state == "on", "minutes": args.minutes})
    until = reply["status"]["test_mode_until"]
    print(
        f"test mode ON until {until}: alarms are sent marked as tests; the centre will not dispatch"
        if until
        else "test mode OFF: alarms are real"
    )
    return 0


def _ms(text: str) -> str:
    """Any RFC 3339 time as the commands' exact form, UTC with milliseconds."""
    from datetime import datetime

    from agent.clock import rfc3339

    try:
        return rfc3339(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError as exc:
        raise AgentError(f"not a time: {text!r}; write it like 2026-11-25T08:00:00Z") from exc


def _centre_status(store: Path, ledger_url: str | None = None) -> str:
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


def cmd_reset_indicator(args: argparse.Namespace) -> int:
    _call(args, {"cmd": "indicator_reset"})
    print("indicator off")
    return 0


def _until_signal(body: Callable[[threading.Event], None]) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    body(stop)
    return 0


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
            return _until_signal(
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
            print(_centre_status(args.store, args.ledger))
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


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    if not args.debug:
        logs.setup("error")  # the demo prints its own narrative; logs only for trouble
    return _until_signal(
        lambda stop: run_demo(args.state, args.presses, args.exit, stop, args.config)
    )


if __name__ == "__main__":
    sys.exit(main())
