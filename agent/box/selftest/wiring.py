"""What the school wired to the box: the buttons' loops and the cameras' streams.

The buttons are read from the running agent when there is one (it holds the pins), else from
the pins. A camera must send a keyframe in time; a probe that hangs in a library call is given
up on, not waited for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from agent.box.selftest.check import Check
from agent.config import redact_url
from agent.config.model import ButtonConfig, CameraConfig, Config
from agent.errors import AgentError


def buttons(cfg: Config, running: dict[str, Any] | None) -> list[Check]:
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


def camera(cam: CameraConfig, timeout_s: float) -> Check:
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
