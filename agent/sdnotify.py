"""systemd's notify protocol, without a dependency: READY, STATUS, WATCHDOG, STOPPING.

A datagram to $NOTIFY_SOCKET ('@' means the abstract namespace). Outside systemd it is a no-op.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None) -> None:
        self._address = address
        watchdog_usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(watchdog_usec) / 1e6 if watchdog_usec.isdigit() else None

    @classmethod
    def from_env(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET"))

    def send(self, **fields: str) -> None:
        if not self._address:
            return
        addr = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(msg, addr)
        except OSError:
            pass  # systemd gone or not listening: nothing useful to do about it
