"""How much video the uplink hands the network, so that an alarm never waits behind it.

An alarm can only wait behind bytes we queued ahead of it: in paho's buffer, in the kernel's
send buffer, in the modem. So video goes out only into an idle pipe: the socket is writable only
while little is unsent (TCP_NOTSENT_LOWAT), a window bounds the chunks in flight, and a virtual
schedule caps the video rate (measurements and choices: docs/uplink.md).
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass

TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux
NOTSENT_LOWAT_BYTES = 16 * 1024  # with no video cap: the link rate is unknown


def notsent_lowat(max_video_kbps: int | None) -> int:
    """Unsent bytes allowed in the kernel: about 30 ms of the video cap, 4-64 KB. An alarm
    waits behind them, so on a 1 Mbit/s link 4 KB (32 ms), not 16 KB (128 ms); see
    docs/uplink.md for the measurement."""
    if max_video_kbps is None:
        return NOTSENT_LOWAT_BYTES
    return max(4096, min(65536, int(max_video_kbps * 125 * 0.03)))


class Gate(enum.Enum):
    """Why video is not being handed to paho right now."""

    IDLE = "no video waiting"
    SOCKET = "waiting for the socket to drain"
    WINDOW = "waiting for a PUBACK"
    BUCKET = "waiting for bandwidth tokens"


@dataclass
class TokenBucket:
    """The video bandwidth cap: ``rate_kbps`` kbit/s; None = no cap.

    A virtual schedule (GCRA): each message has a theoretical send time, ``nbytes / rate``
    after the previous one's, and may go up to ``burst_s`` early. The burst is short (0.1 s):
    a long one fills the modem's buffer above the cap and an alarm then waits behind it
    (docs/uplink.md). Being early by design, a sender that wakes a few ms late loses nothing,
    so the long-run rate is the cap (a full-bucket rule lost ~7% of it to wake-up lateness).
    """

    rate_kbps: int | None
    burst_s: float = 0.1
    due: float | None = None  # the theoretical time of the next message

    def wait_for(self, nbytes: int, now: float) -> float:
        """Seconds until ``nbytes`` may be sent; when 0, they are booked on the schedule."""
        if self.rate_kbps is None:
            return 0.0
        due = now if self.due is None else max(self.due, now)  # no credit for idle time
        if due - now > self.burst_s:
            return due - now - self.burst_s
        self.due = due + nbytes / (self.rate_kbps * 125.0)
        return 0.0
