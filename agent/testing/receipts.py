"""The centre's receipts and presence as every school sees them, read by ``mosquitto_sub`` (C): a
burst of hundreds of receipts is more than a Python client's loop keeps up with.
"""

from __future__ import annotations

import json
import subprocess
import threading

from agent.testing.broker import die_with_parent


class Receipts:
    """The centre's receipts and presence, as every school sees them, read by ``mosquitto_sub``.

    A burst of hundreds of receipts is more than a Python client's loop keeps up with (one select
    turn per message: it measured the reader instead of the receiver, or fell behind until the
    broker dropped what exceeded its queue), and one QoS 1 reader has one in-flight window at the
    broker, which the schools' many connections do not share. ``confirmed``: event id -> the
    wall-clock time (``time.time()``, as mosquitto_sub's ``%U``) its first receipt was read;
    ``online``: the client ids of the receivers whose presence says online.
    """

    def __init__(self, port: int, qos: int = 1, prefix: str = "schools") -> None:
        self.port, self.qos, self.prefix = port, qos, prefix
        self.confirmed: dict[str, float] = {}
        self.online: set[str] = set()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Receipts:
        self._proc = subprocess.Popen(
            [
                "mosquitto_sub",
                "-p",
                str(self.port),
                "-V",
                "mqttv5",
                "-q",
                str(self.qos),
                "-t",
                f"{self.prefix}/+/receipt",
                "-t",
                f"{self.prefix}/_centre/presence/+",
                "-F",
                "%U %t %p",
            ],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        self._thread = threading.Thread(
            target=self._read, args=(self._proc,), name="receipts", daemon=True
        )
        self._thread.start()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            at, topic, payload = line.split(" ", 2)
            doc = json.loads(payload) if payload.strip() else {}
            if topic.startswith(f"{self.prefix}/_centre/presence/"):
                receiver = topic.rsplit("/", 1)[1]
                if doc.get("state") == "online":
                    self.online.add(receiver)
                else:
                    self.online.discard(receiver)
                continue
            for event in doc.get("alarms", []):
                self.confirmed.setdefault(event, float(at))

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Receipts:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
