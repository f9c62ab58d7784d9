"""``edge-agent``: the one command technicians, the centre and the tests use.

Errors the user can act on (AgentError) print one line and exit non-zero; no traceback ever
reaches a technician. ``--debug`` shows it for developers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__, logs
from agent.box import control, walktest
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

    from agent.centre.cli import add_parser as add_central
    from agent.centre.console.cli import add_parser as add_console

    add_central(sub)

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


def cmd_reset_indicator(args: argparse.Namespace) -> int:
    _call(args, {"cmd": "indicator_reset"})
    print("indicator off")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.centre.cli import until_signal
    from agent.demo import run_demo

    if not args.debug:
        logs.setup("error")  # the demo prints its own narrative; logs only for trouble
    return until_signal(
        lambda stop: run_demo(args.state, args.presses, args.exit, stop, args.config)
    )


if __name__ == "__main__":
    sys.exit(main())
