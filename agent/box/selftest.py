"""``edge-agent selftest``: is this box ready to protect a school? A table a technician can act on.

Each check says PASS or FAIL and, when it fails, what to do. It is safe to run while the agent
is running: the buttons are then read from the running agent rather than by opening the pins
(which the agent holds). With a dc09 section, each DC-09 receiver gets one periodic test report
(RP / 602, zone 0) on a connection of the selftest's own, outside the agent's queue.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.box import control
from agent.clock import clock_synced
from agent.config import redact_url
from agent.config.model import ButtonConfig, CameraConfig, Config
from agent.delivery.dc09.events import BOX_ZONE, Event, EventKind, encode
from agent.delivery.dc09.frame import Address, FrameError, ReplyKind, build
from agent.delivery.dc09.link import Link, LinkError
from agent.delivery.dc09.settings import Receiver, Settings
from agent.delivery.uplink.pacing import describe
from agent.errors import AgentError


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(cfg: Config, camera_timeout_s: float = 5.0) -> list[Check]:
    running = _running_status(cfg)
    checks = [_disk(cfg), _clock(), *_buttons(cfg, running)]
    checks += [_camera(cam, camera_timeout_s) for cam in cfg.cameras]
    checks.append(_broker_of_running(running) if running else _broker(cfg))
    if running:
        checks.append(_upload(running))
    if cfg.dc09 is not None:
        checks += [_dc09(cfg.dc09.settings, r, cfg.site.name) for r in cfg.dc09.settings.receivers]
    return checks


def _running_status(cfg: Config) -> dict[str, Any] | None:
    """The running agent's own view. A second connection under the site's identity would
    replace the agent's (the production broker pins client ids to certificates)."""
    try:
        reply = control.call(control.socket_path(Path(cfg.storage.path)), {"cmd": "status"}, 5)
        status: dict[str, Any] = reply["status"]
        return status
    except (AgentError, KeyError):
        return None


def _broker_of_running(status: dict[str, Any]) -> Check:
    up = status["uplink"]
    if up["state"] == "online":
        return Check("broker", True, f"{up['broker']}: the running agent is online")
    return Check(
        "broker",
        False,
        f"{up['broker']}: the running agent is {up['state']}: {up['last_error']}",
        "check the network, mqtt.host/port and the TLS files",
    )


def _upload(status: dict[str, Any]) -> Check:
    """What the running agent measured of the school's upload: only it can, while video
    uploads (a second connection would replace the agent's, see _running_status)."""
    pacing = status["uplink"].get("pacing") or {}
    detail = describe(pacing)
    if pacing.get("mode") != "auto" and not pacing.get("ceiling_kbps"):
        return Check(
            "upload",
            False,
            f"{detail}: an alarm can wait behind our own video in "
            "the modem's buffer, 0.5 s or more",
            "remove uplink.auto_rate: false from the config",
        )
    if pacing.get("upload_kbps") == 0:
        return Check(
            "upload",
            False,
            detail,
            "check the school's router and its uplink; the "
            "broker line above says whether the connection is up",
        )
    if (pacing.get("alarm_wait_ms") or 0) > 1000:
        return Check(
            "upload",
            False,
            detail,
            "the upload is very slow or something else at "
            "the school fills it: check the router; uplink.max_kbps caps our video",
        )
    return Check("upload", True, detail)


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.name:<{width}}  {'PASS' if c.ok else 'FAIL'}  {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"{'':<{width}}        -> {c.fix}")
    failed = sum(not c.ok for c in checks)
    lines.append(f"\n{len(checks) - failed} passed, {failed} failed")
    return "\n".join(lines)


def _write_probe(directory: Path) -> str:
    """Write, fsync and remove a 4 KB file; "" or why not. A fresh random name opened with
    O_EXCL|O_NOFOLLOW: a file or symlink planted in the directory is never followed."""
    path = directory / f".selftest-{os.urandom(8).hex()}"
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            path.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def _probe_as_owner(storage: Path) -> str:
    """The write probe as the storage's owner (the service user); "" or why it failed.

    ``sudo edge-agent selftest`` runs as root, in a directory the service user owns: root must
    not write there (a compromised service could make it touch any file), and a check passed on
    root's privileges says nothing about what the agent itself can do. So a forked child drops
    to the owner first; it only makes system calls, so forking a threaded process is safe.
    """
    st = os.stat(storage)
    if os.geteuid() != 0 or st.st_uid == 0:
        return _write_probe(storage)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(st.st_gid)
            os.setuid(st.st_uid)
            os.write(write_end, _write_probe(storage).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        problem = answer.read().decode(errors="replace")
    os.waitpid(pid, 0)
    return f"{problem} (as uid {st.st_uid}, the directory's owner)" if problem else ""


def _disk(cfg: Config) -> Check:
    storage = Path(cfg.storage.path)
    try:
        storage.mkdir(parents=True, exist_ok=True)
        problem = _probe_as_owner(storage)
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem:
        return Check(
            "disk",
            False,
            f"{storage} is not writable: {problem}",
            "check the mount (read-only? full?) and that the edge-agent user owns it",
        )
    free_gb = shutil.disk_usage(storage).free / 1e9
    if free_gb < cfg.storage.max_gb:
        return Check(
            "disk",
            False,
            f"{free_gb:.1f} GB free at {storage}, less than storage.max_gb={cfg.storage.max_gb}",
            "free space or lower storage.max_gb",
        )
    return Check("disk", True, f"{storage} writable, {free_gb:.1f} GB free")


def _clock() -> Check:
    if clock_synced():
        return Check("clock", True, "synchronised (NTP)")
    return Check(
        "clock",
        False,
        "not synchronised: alarm times may be wrong",
        "check NTP: timedatectl status; the box needs a reachable time server",
    )


def _buttons(cfg: Config, running: dict[str, Any] | None) -> list[Check]:
    """From the running agent if there is one (it holds the pins), else from the pins."""
    if running is not None:
        states = {bid: b["state"] for bid, b in running["buttons"].items()}
        source = "running agent"
    else:
        try:
            states = _read_pins(cfg)
        except AgentError as exc:
            return [Check("gpio", False, str(exc), "see hardware/README.md")]
        source = f"{cfg.gpio.backend} backend"
    return [_button_check(b, states.get(b.id, "unknown"), source) for b in cfg.buttons]


def _button_check(b: ButtonConfig, state: str, source: str) -> Check:
    name = f"button {b.id}"
    where = f"GPIO {b.pin}, {b.wiring}"
    if state == "idle":
        return Check(name, True, f"{where}: idle as expected ({source})")
    if state == "failed":
        return Check(
            name,
            False,
            f"{where}: the pin could not be opened",
            "is another program using it? is python3-lgpio installed?",
        )
    what = (
        "the loop is open: a cut cable, a loose terminal or the button pressed"
        if b.wiring == "normally_closed"
        else "it reads pressed: a stuck button or a short"
    )
    return Check(
        name, False, f"{where}: {state}; {what}", "check the wiring against hardware/README.md"
    )


def _read_pins(cfg: Config) -> dict[str, str]:
    from agent.hardware.buttons import ButtonBoard, make_pin_factory

    board = ButtonBoard(cfg.buttons, make_pin_factory(cfg.gpio.backend), lambda _e: None)
    board.start()
    try:
        time.sleep(0.1)
        return {bid: b["state"] for bid, b in board.snapshot().items()}
    finally:
        board.stop()


def _camera(cam: CameraConfig, timeout_s: float) -> Check:
    from agent.video.sources import open_source

    name = f"camera {cam.id}"
    result: list[Check] = []

    def probe() -> None:
        source = open_source(cam)
        try:
            info = source.open(stall_s=timeout_s)
            for packet in _limited(source.packets(), timeout_s):
                if packet.keyframe:
                    result.append(
                        Check(
                            name,
                            True,
                            f"keyframe received ({info.width}x"
                            f"{info.height}) from {redact_url(cam.source)}",
                        )
                    )
                    return
        except Exception as exc:  # any source failure is this check's result, redacted
            result.append(
                Check(
                    name,
                    False,
                    redact_url(f"{type(exc).__name__}: {exc}"),
                    "check the address, the credentials and that the camera sends H.264",
                )
            )
        finally:
            source.close()

    _bounded(probe, timeout_s + 3)
    return (
        result[0]
        if result
        else Check(
            name,
            False,
            f"no keyframe within {timeout_s:.0f} s from {redact_url(cam.source)}",
            "check the camera's GOP / I-frame interval (at most a few seconds) and its stream",
        )
    )


def _broker(cfg: Config) -> Check:
    from agent.delivery.uplink.client import build_client

    name = "broker"
    where = f"{cfg.mqtt.host}:{cfg.mqtt.port} ({'TLS' if cfg.mqtt.tls else 'plain'})"
    done = threading.Event()
    outcome: list[str] = []

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        outcome.append("" if not rc.is_failure else f"refused: {rc}")
        done.set()

    try:
        client = build_client(cfg.mqtt, "-selftest")
        client.on_connect = on_connect
        client.connect(cfg.mqtt.host, cfg.mqtt.port, keepalive=10)
    except (OSError, ValueError) as exc:
        return Check(
            name,
            False,
            f"{where}: {exc}",
            "check mqtt.host/port, the network, and the TLS files (CA, certificate)",
        )
    client.loop_start()
    try:
        if not done.wait(5):
            return Check(
                name,
                False,
                f"{where}: no answer to CONNECT in 5 s",
                "a firewall may be dropping the traffic",
            )
    finally:
        client.disconnect()
        client.loop_stop()
    if outcome[0]:
        return Check(
            name,
            False,
            f"{where}: {outcome[0]}",
            "check the username/password or the client certificate with the centre",
        )
    return Check(name, True, f"{where}: connected")


class _Waiting:
    """What a DC-09 link's wait needs from its thread (agent/delivery/dc09/link.py: Pulse)."""

    stopping = threading.Event()

    def beat(self) -> None:
        pass


def _dc09(s: Settings, r: Receiver, site: str) -> Check:
    """One periodic test report, as the agent sends it; a NAK is answered once with the
    receiver's clock, as the agent does, so a box whose clock is off still passes."""
    name = f"dc09 {r.name}"
    where = f"account {r.account}, {s.format}{', AES' if r.key else ''}"
    message = encode(Event(EventKind.PERIODIC_TEST, BOX_ZONE, site), s.format, r.account)
    seq, offset, link = secrets.randbelow(9999) + 1, 0.0, Link(r)
    try:
        for _ in range(2):
            frame = build(
                message.token,
                seq,
                Address(r.account, r.receiver, r.line),
                message.data,
                extended=message.extended,
                sent_at=time.time() + offset,
                key=r.key,
            )
            reply = link.exchange(frame, seq, s.ack_timeout_s, _Waiting())
            if reply is None:
                return Check(
                    name,
                    False,
                    f"no answer within {s.ack_timeout_s:g} s ({where})",
                    "check host, port and tcp/udp with the centre, the firewall, and "
                    "that the receiver runs",
                )
            if reply.kind is ReplyKind.NAK and reply.timestamp is not None:
                offset = reply.timestamp - time.time()
                continue
            if reply.kind is ReplyKind.DUH:
                return Check(
                    name,
                    False,
                    f"answered DUH: it does not take a test report ({where})",
                    "ask the centre to accept periodic test reports "
                    "(RP / 602) on the account, or check dc09.format",
                )
            clock = f"; its clock is {offset:+.0f} s from ours" if abs(offset) > 1 else ""
            return Check(name, True, f"test report acknowledged ({where}){clock}")
        return Check(
            name,
            False,
            f"refused the test report twice (NAK; {where})",
            "check dc09.account, the AES key file and dc09.format with the centre",
        )
    except (LinkError, FrameError) as exc:
        return Check(
            name,
            False,
            str(exc),
            "check host, port and tcp/udp with the centre, "
            "the network path to the receiver, and dc09.account",
        )
    finally:
        link.close()


def _limited(packets: Iterator[Any], seconds: float) -> Iterator[Any]:
    deadline = time.monotonic() + seconds
    for p in packets:
        yield p
        if time.monotonic() > deadline:
            return


def _bounded(fn: Callable[[], None], seconds: float) -> None:
    """Run a probe that may block in a library call; give up waiting after ``seconds``."""
    t = threading.Thread(target=fn, name="selftest-probe", daemon=True)
    t.start()
    t.join(seconds)
