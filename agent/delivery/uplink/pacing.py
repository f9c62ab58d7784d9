"""How much video the uplink hands the network, so that an alarm never waits behind it.

An alarm can only wait behind bytes we queued ahead of it: in paho's buffer, in the kernel's
send buffer, in the modem. So video goes out only into an idle pipe. The pipe is measured, not
configured: :class:`PathMeter` reads from TCP_INFO how much of ours waits in the kernel and in
the modem and how fast the path delivers, and a video message is handed over only when at most
a segment and 20 ms of it wait ahead; the kernel paces the socket at about the path's rate, and
video is cut small enough on a slow link (measurements and choices: docs/uplink.md). A window
bounds the messages in flight; ``uplink.max_kbps`` is only a ceiling (a virtual schedule).
``uplink.auto_rate: false``, or a kernel without TCP_INFO, keeps the fixed pacing of before:
the socket's writability (TCP_NOTSENT_LOWAT) and the cap alone.
"""

from __future__ import annotations

import enum
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.delivery.uplink import tcpinfo
from agent.delivery.uplink.tcpinfo import SO_MAX_PACING_RATE, TCP_NOTSENT_LOWAT, TcpInfo

NOTSENT_LOWAT_BYTES = 16 * 1024  # with no video cap: the link rate is unknown
WINDOW = 8  # video messages awaiting their PUBACK


def notsent_lowat(max_video_kbps: float | None) -> int:
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
    PATH = "waiting for our data on the path to drain"
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

    rate_kbps: float | None
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


# The path meter's constants; docs/uplink.md says how each was chosen.
RATE_S = 1.0  # the delivery rate is measured over windows this long ...
RATE_KEEP = 3  # ... and the estimate is the largest of the last this many
START_BPS = 62_500.0  # 0.5 Mbit/s: the rate assumed before anything was measured
PACING_GAIN = 1.25  # the kernel paces our socket at this multiple of the estimate
MARGIN_SEGMENTS = 1  # video goes when at most this many segments ...
MARGIN_S = 0.02  # ... plus this long at the upload rate wait ahead of it on the path
MAX_WAIT_S = 0.02  # a closed path is looked at again at least this often ...
EARLY = 2.0  # ... and as if it drained this much faster than the estimate: a late look
# leaves the link idle, an early one costs a system call
BOX_LIMITED = 0.9  # a window that delivered this share of the kernel's pacing rate was
# held back by that pacing, not by the link
CHUNK_S = 0.1  # video is cut into messages of about this long at the upload rate ...
MIN_CHUNK = 4096  # ... but no smaller (each carries a ~400-byte header) ...
MAX_CHUNK = 10 * 1024  # ... and no larger: a clip is cut when it is queued and sent whole after
# the link drops: 10 KB is 164 ms of a 0.5 Mbit/s link, 16 KB 262 ms (bench/uplink.py's step: back
# under 300 ms 16.9 s after the drop with 16 KB, 1.0 s with 8 KB; 8 KB cost 4 Mbit/s goodput) ...
MAX_MESSAGES_S = 150  # ... unless that makes more video messages a second than this: the
# centre's broker drops a box's messages past 200 a second (docs/broker.md, broker/rate_limit.c),
# so on fibre the box sends fewer, larger ones (100 Mbit/s: 82 KB, 6.6 ms of that link) ...
LARGEST_CHUNK = 128 * 1024  # ... but never near the broker's max_packet_size (260 KB)
UNPACED = 0xFFFFFFFF  # SO_MAX_PACING_RATE's "no limit"


class PathMeter:
    """How much of our own data waits on the path, and how fast the path delivers it.

    Everything comes from TCP_INFO (tcpinfo.py), read whenever video waits to go:

    - ahead: bytes a message handed over now would wait behind, in our kernel (not yet sent)
      and in the modem: sent and unacknowledged, beyond what one round trip at the upload
      rate keeps on the wire (``inflight - rate * min_rtt``);
    - the upload rate: bytes acknowledged per second over windows of RATE_S in which video
      waited all along, so that the path, not the cameras, set the pace; the largest of the
      last RATE_KEEP, so that one slow window is not taken for a slower link, but three are.

    Uplink thread only; other threads read the plain attributes for status. Pure: fed
    samples, it answers; nothing here touches a socket.
    """

    def __init__(self) -> None:
        self.upload_bps: float | None = None
        self.base_rtt_s: float | None = None
        self.ahead_bytes = 0
        self.margin = 0.0  # what may wait ahead of a video message on the path, in bytes
        self.standing_bytes = 0  # the least of ours in the modem over the last RATE_S
        self.box_limited = False  # in the last window, our kernel's pacing held video back
        self._rates: deque[float] = deque(maxlen=RATE_KEEP)
        self._window_start: tuple[float, int, float | None] | None = None  # t, acked, pacing
        self._recent: deque[tuple[float, int]] = deque()  # (t, in modem) over RATE_S
        self._last = 0.0

    def connected(self) -> None:
        """A new connection's counters start from zero; what we learnt of the path stays."""
        self._window_start = None
        self._recent.clear()

    def sample(self, now: float, info: TcpInfo) -> None:
        """A reading taken while video waits to go."""
        self.base_rtt_s = info.min_rtt_s
        on_wire = (self.upload_bps or 0.0) * info.min_rtt_s
        modem = max(0, int(info.bytes_sent - info.bytes_acked - on_wire))
        self.ahead_bytes = info.notsent_bytes + modem
        self.margin = MARGIN_SEGMENTS * info.snd_mss + MARGIN_S * (self.upload_bps or START_BPS)
        if now - self._last > 0.2:
            self._window_start = None  # video did not wait all along: not the path's pace
            self._recent.clear()
        self._last = now
        self._recent.append((now, modem))
        while now - self._recent[0][0] > RATE_S:
            self._recent.popleft()
        self.standing_bytes = min(m for _, m in self._recent)
        if self._window_start is None:
            self._window_start = (now, info.bytes_acked, self.pacing_bps())
            return
        t0, acked0, paced = self._window_start
        if now - t0 >= RATE_S:
            rate = (info.bytes_acked - acked0) / (now - t0)
            self._rates.append(rate)
            self.upload_bps = max(self._rates)
            self.box_limited = paced is not None and rate >= BOX_LIMITED * paced
            self._window_start = (now, info.bytes_acked, self.pacing_bps())

    def idle(self) -> None:
        """The pacer's bucket, not the path, held video back: this window says nothing."""
        self._window_start = None

    def wait_s(self) -> float:
        """Seconds until what waits ahead has drained to the margin (0: send now)."""
        excess = self.ahead_bytes - self.margin
        if excess <= 0:
            return 0.0
        return min(MAX_WAIT_S, excess / (EARLY * (self.upload_bps or START_BPS)))

    def pacing_bps(self) -> float | None:
        """What the kernel may send at: a little above the link's rate, so a chunk leaves the
        box at about the rate the modem passes it on, not as one burst into its buffer.
        Unpaced (None) before the first window, and for a window after the pacing itself held
        video back (the link grew): at most a message and the margin are on the path anyway,
        and that window then shows the link's rate at once, whatever it is."""
        if self.upload_bps is None or self.box_limited:
            return None
        return PACING_GAIN * self.upload_bps


Reader = Callable[[socket.socket], TcpInfo | None]


class Pacer:
    """The video's gate, owned by the uplink thread: the in-flight window, the low-water mark,
    the ``uplink.max_kbps`` bucket and, with ``auto``, the path meter: video goes only while
    little of ours waits on the path, and the kernel paces our socket at about its rate."""

    def __init__(
        self,
        ceiling_kbps: int | None = None,
        auto: bool = True,
        *,
        window: int = WINDOW,
        read: Reader = tcpinfo.read,
    ) -> None:
        self.ceiling_kbps = ceiling_kbps
        self.window = window
        self._read = read
        self.meter = PathMeter() if auto else None
        self._measured = False  # TCP_INFO answered on this connection
        self.bucket = TokenBucket(ceiling_kbps)
        self.lowat = notsent_lowat(ceiling_kbps)
        self._applied: tuple[int, int] | None = None  # (lowat, pacing B/s) on the socket
        self.largest_message = 0  # the largest video message of this connection

    @property
    def auto(self) -> bool:
        """The path is measured: video waits for it, not for the socket's writability."""
        return self.meter is not None and self._measured

    def attach(self, sock: socket.socket) -> None:
        """A new connection: apply the low-water mark (and pacing); forget its counters."""
        self._applied = None
        self.largest_message = 0
        info = self._read(sock) if self.meter is not None else None
        self._measured = info is not None
        if self.meter is not None:
            self.meter.connected()
        self._apply(sock, info)

    def path_wait(self, sock: object, now: float) -> float | None:
        """Seconds until a video message may be handed over (0: now), or None when the path
        is not measured and the socket's writability decides, as with a fixed cap."""
        if not self.auto or self.meter is None or not isinstance(sock, socket.socket):
            return None
        info = self._read(sock)
        if info is None:
            return None
        self.meter.sample(now, info)
        self._apply(sock, info)
        return self.meter.wait_s()

    def wait_for(self, nbytes: int, now: float) -> float:
        """Seconds until a video message of ``nbytes`` may go (0: it is booked)."""
        self.largest_message = max(self.largest_message, nbytes)
        wait = self.bucket.wait_for(nbytes, now)
        if wait > 0 and self.meter is not None:
            self.meter.idle()
        return wait

    def chunk_bytes(self, largest: int) -> int:
        """How big to cut video for the uplink now, from any thread: about CHUNK_S at the
        upload rate, at most MAX_CHUNK, so that an alarm never waits long behind one, even after
        the link drops; larger on a fast link, to stay under MAX_MESSAGES_S (docs/uplink.md);
        ``largest`` under fixed pacing."""
        if self.meter is None:  # fixed pacing: as before the pacer
            return largest
        largest = min(largest, MAX_CHUNK)
        upload = self.meter.upload_bps
        if upload is None:
            return largest
        size = max(MIN_CHUNK, min(largest, round(upload * CHUNK_S / 1024) * 1024))
        fewest = -(-int(upload / MAX_MESSAGES_S) // 1024) * 1024  # rounded up to 1 KB
        return min(LARGEST_CHUNK, max(size, fewest))

    def _apply(self, sock: socket.socket, info: TcpInfo | None) -> None:
        pacing = 0
        if self.meter is not None and info is not None:
            pacing = int(self.meter.pacing_bps() or UNPACED)
            self.lowat = max(4096, int(self.meter.margin))
        if self._applied is not None:
            lowat0, pacing0 = self._applied
            if lowat0 == self.lowat and abs(pacing - pacing0) <= pacing0 * 0.02:
                return
        tcpinfo.set_option(sock, socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, self.lowat)
        if pacing:
            tcpinfo.set_option(sock, socket.SOL_SOCKET, SO_MAX_PACING_RATE, pacing)
        self._applied = (self.lowat, pacing)

    def status(self) -> dict[str, Any]:
        """What the pacer uses now, for ``status --json``, health and selftest."""
        m = self.meter if self.auto else None
        upload = m.upload_bps if m else None

        def ms(s: float | None) -> float | None:
            return None if s is None else round(s * 1e3, 1)

        return {
            "mode": "auto" if m else "fixed",
            "upload_kbps": None if upload is None else round(upload / 125.0),
            "ceiling_kbps": self.ceiling_kbps,
            "base_rtt_ms": ms(m.base_rtt_s) if m else None,
            "queue_delay_ms": ms(m.standing_bytes / upload) if m and upload else None,
            "alarm_wait_ms": ms(self._alarm_wait(m, upload)),
            "notsent_lowat": self.lowat,
            "window": self.window,
        }

    def _alarm_wait(self, m: PathMeter | None, upload: float | None) -> float | None:
        """How long an alarm pressed now would take while video uploads: the path's round
        trip, and at most one video message and the margin ahead of it at the upload rate."""
        if m is None or not upload or m.base_rtt_s is None:  # 0: nothing delivered (a dead link)
            return None
        return m.base_rtt_s + (self.largest_message + m.margin) / upload


def describe(status: dict[str, Any]) -> str:
    """The pacer's status in a technician's words (``edge-agent status``, ``selftest``)."""
    if status.get("mode") != "auto":
        cap = status.get("ceiling_kbps")
        return (
            f"not measured; video capped at {cap} kbit/s"
            if cap
            else "not measured; video not paced"
        )
    upload = status.get("upload_kbps")
    if upload is None:
        return "not measured yet: it is measured while video uploads"
    if upload == 0:
        return "nothing delivered in the last seconds while video waited: is the link down?"
    mbit = upload / 1000
    wait = (status.get("alarm_wait_ms") or 0.0) / 1000
    return (
        f"upload about {mbit:.1f} Mbit/s; alarms will reach the centre in "
        f"{'under 0.1' if wait < 0.1 else f'about {wait:.1f}'} s while video uploads "
        f"(base RTT {status.get('base_rtt_ms')} ms, queue {status.get('queue_delay_ms')} ms)"
    )
