"""What the box does for each request on its local control socket (agent/box/control.py).

The socket is the technician's, and the simulated school's: ``status``, ``simulate`` a press,
``indicator_reset``, ``test_mode``, and ``inject`` (the test seam for crash-only threads, taken
only on mock pins). Runs on the ``control`` thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.errors import AgentError
from agent.hardware.buttons import ButtonBoard
from agent.hardware.indicators import Indicators
from agent.supervision import Supervisor


class ControlRequests:
    """``set_test_mode`` as the daemon's: minutes, or None to end it."""

    def __init__(
        self,
        *,
        status: Callable[[], dict[str, Any]],
        buttons: ButtonBoard,
        indicators: Indicators,
        supervisor: Supervisor,
        set_test_mode: Callable[[int | None], str | None],
        simulated: bool,
    ) -> None:
        self._status = status
        self._buttons = buttons
        self._indicators = indicators
        self._supervisor = supervisor
        self._set_test_mode = set_test_mode
        self._simulated = simulated  # gpio.backend: mock

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        match req.get("cmd"):
            case "status":
                return {"ok": True, "status": self._status()}
            case "simulate":
                action = req.get("action")
                if action not in ("press", "release"):
                    raise AgentError("simulate needs action 'press' or 'release'")
                events = self._buttons.simulate(str(req.get("button")), action == "press")
                return {"ok": True, "events": events}
            case "indicator_reset":
                self._indicators.reset()
                return {"ok": True, "status": self._status()}
            case "inject":
                self._inject(req)
                return {"ok": True, "status": self._status()}
            case "test_mode":
                minutes = req.get("minutes", 30)
                if req.get("on") is not True:
                    self._set_test_mode(None)
                elif not isinstance(minutes, int):
                    raise AgentError("test mode needs a whole number of minutes")
                else:
                    try:
                        self._set_test_mode(minutes)
                    except ValueError as exc:  # the walk test's own limit
                        raise AgentError(str(exc)) from exc
                return {"ok": True, "status": self._status()}
            case other:
                raise AgentError(f"unknown control command {other!r}")

    def _inject(self, req: dict[str, Any]) -> None:
        """The test seam for crash-only threads: crash or hang a thread, like a bug would.
        Only in the simulated school, as ``simulate``: a real box never takes it."""
        if not self._simulated:
            raise AgentError("inject works only in a simulated school (gpio.backend: mock)")
        hang_s = req.get("hang_s", 0)
        if not isinstance(hang_s, int | float) or not 0 <= hang_s <= 120:
            raise AgentError("hang_s is 0 to 120 seconds")
        self._supervisor.inject(str(req.get("thread")), hang_s=float(hang_s))
