"""The local control socket (agent/box/control.py): what `edge-agent status` and friends talk to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.box.control import ControlServer, call
from agent.errors import AgentError


def test_a_failing_answer_is_an_error_reply_and_the_socket_keeps_serving(tmp_path: Path) -> None:
    """A bug under one request (the pacer's status once divided by zero on a dead link) must
    give `edge-agent status` an error to show, not a silent dead connection, and must not stop
    the next request."""

    def handler(request: dict[str, Any]) -> dict[str, Any]:
        if request["cmd"] == "boom":
            raise ZeroDivisionError("float division by zero")
        if request["cmd"] == "refused":
            raise AgentError("not in this mode")
        return {"ok": True, "cmd": request["cmd"]}

    server = ControlServer(tmp_path / "control.sock", handler)
    server.start()
    try:
        failed = call(server.path, {"cmd": "boom"}, timeout=5)
        assert failed["ok"] is False and "ZeroDivisionError" in failed["error"]
        assert call(server.path, {"cmd": "refused"}, timeout=5) == {
            "ok": False,
            "error": "not in this mode",
        }
        assert call(server.path, {"cmd": "status"}, timeout=5) == {"ok": True, "cmd": "status"}
    finally:
        server.stop()
