"""A TCP proxy between the box and a real Mosquitto that knows where MQTT packets end.

It exists to cut the box's link at an exact point of a session: "right after the broker's 7th
packet to the box" rather than "at some moment". paho's own test suite scripts brokers packet by
packet for the same reason (tests/lib in paho.mqtt.python, e.g.
test_03_publish_c2b_qos1_disconnect.py); here the broker is real and only the cut is scripted.

Each direction of a connection is split into control packets (one fixed-header byte, then the
remaining length as a 1-4 byte varint, MQTT 3.1.1 and 5 alike) and forwarded whole, one packet
at a time, so the cut falls between two packets and never inside one. Only the FIRST connection
is cut; the box's reconnects pass through untouched, so recovery is observed, not disturbed.

Two ways to cut, the two a box meets in the field:

- ``rst``: SO_LINGER 0 on both sockets, then close. The box and the broker each get a reset
  (a router or the broker host rebooting). The reset waits ``RST_GRACE_S`` after packet k,
  forwarding nothing meanwhile: Mosquitto reads one packet per wake-up and drops a client on a
  reset without reading what is still queued, so without the grace "after packet k" would mean
  "after some earlier packet" at random. Packets lost in flight are covered all the same: they
  are the packets after k that the proxy never forwards.
- ``blackhole``: stop reading and forwarding both ways, and keep both sockets open. TCP still
  accepts the box's bytes, but no MQTT packet moves again: only the box's own timers (an
  alarm's PUBACK deadline, keepalive) can notice (a NAT entry lost, a stuck middlebox).

PINGREQ and PINGRESP are forwarded and logged but not numbered: they come from timers, not from
the session, so numbering them would tie the cut points to the machine's speed.
"""

from __future__ import annotations

import contextlib
import enum
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from paho.mqtt.packettypes import PacketTypes

_UNNUMBERED = frozenset({PacketTypes.PINGREQ, PacketTypes.PINGRESP})
RST_GRACE_S = 0.05  # 5 packets queued behind a reset: 20 ms let Mosquitto read all, in 20 of 20


class Direction(enum.StrEnum):
    A2B = "a2b"  # the agent (the box) to the broker
    B2A = "b2a"  # the broker to the box


class CutMode(enum.StrEnum):
    RST = "rst"
    BLACKHOLE = "blackhole"


@dataclass(frozen=True, slots=True)
class Cut:
    """Cut the first connection right after forwarding its ``after``-th numbered packet
    (counted from 1) in ``direction``; ``after=0`` in a2b cuts before anything passes."""

    direction: Direction
    after: int
    mode: CutMode

    def __str__(self) -> str:
        return f"{self.mode} after {self.direction} packet {self.after}"


def split_packets(buf: bytearray) -> list[bytes]:
    """Take every complete MQTT packet off the front of ``buf``; a partial one stays."""
    out: list[bytes] = []
    while True:
        length = _packet_length(buf)
        if length is None:
            return out
        out.append(bytes(buf[:length]))
        del buf[:length]


def _packet_length(buf: bytearray | bytes) -> int | None:
    value, shift = 0, 0
    for i in range(1, 5):
        if i >= len(buf):
            return None
        value |= (buf[i] & 0x7F) << shift
        if not buf[i] & 0x80:
            total = i + 1 + value
            return total if len(buf) >= total else None
        shift += 7
    raise ValueError("malformed MQTT remaining length (more than 4 bytes)")


def describe(packet: bytes) -> str:
    """``PUBACK``, or ``PUBLISH alarm`` (the topic after prefix and site): for failure messages."""
    kind = packet[0] >> 4
    name = PacketTypes.Names[kind].upper()
    if kind != PacketTypes.PUBLISH:
        return name
    header = next(i for i in range(1, 5) if not packet[i] & 0x80) + 1
    (size,) = struct.unpack_from("!H", packet, header)
    topic = packet[header + 2 : header + 2 + size].decode("utf-8", "replace")
    return f"{name} {'/'.join(topic.split('/')[2:]) or topic}"  # without prefix and site


@dataclass
class Link:
    """One connection the box made: the numbered packets forwarded each way, in order."""

    number: int
    box: socket.socket
    broker: socket.socket | None = None
    packets: dict[Direction, list[str]] = field(default_factory=lambda: {d: [] for d in Direction})
    pings: int = 0  # PINGREQ and PINGRESP forwarded, not numbered


class MqttProxy:
    """``start()`` listens on 127.0.0.1:``port``; the box connects there instead of to the
    broker.

    ``hold_first``: the first connection is accepted (the box's CONNECT waits in the socket) but
    nothing is forwarded until :meth:`release`, so a test can act while the box is connecting.
    """

    def __init__(
        self, broker_port: int, cut: Cut | None = None, *, hold_first: bool = False
    ) -> None:
        self.broker_port = broker_port
        self.port = 0  # known once started: a port picked and released earlier may be taken
        self.cut = cut
        self.cut_at = ""  # e.g. "rst after b2a packet 7 (PUBACK)", once the cut happened
        self.links: list[Link] = []
        self._released = threading.Event()
        if not hold_first:
            self._released.set()
        self._closing = threading.Event()
        self._held: list[socket.socket] = []  # black-holed sockets, kept open until close()
        self._lock = threading.Lock()  # guards links and _held (the accept and link threads)
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> MqttProxy:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._listener.settimeout(0.2)
        self._spawn(self._accept, "proxy-accept")
        return self

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._closing.set()
        self._released.set()
        for t in self._threads:
            t.join(5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for s in self._held:
                s.close()
            self._held.clear()

    def first(self) -> Link | None:
        with self._lock:
            return self.links[0] if self.links else None

    def trace(self, around: int = 4) -> str:
        """The first connection's packets near the cut (all of them with no cut): for failures."""
        link = self.first()
        if link is None:
            return "the box never connected"
        lines = []
        for d in Direction:
            names = link.packets[d]
            if self.cut is not None and self.cut.direction is d:
                lo = max(0, self.cut.after - 1 - around)
                names = names[lo : self.cut.after + around]
                lines.append(f"{d} from #{lo + 1}: {', '.join(names)}")
            else:
                lines.append(f"{d}: {', '.join(names)}")
        return "; ".join(lines) + f"; pings: {link.pings}; connections: {len(self.links)}"

    # --- threads ------------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closing.is_set():
            try:
                box, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                link = Link(len(self.links) + 1, box)
                self.links.append(link)
            self._spawn(self._serve, f"proxy-link-{link.number}", link)

    def _serve(self, link: Link) -> None:
        while not self._released.wait(0.2):
            pass  # close() releases too
        try:
            link.broker = socket.create_connection(("127.0.0.1", self.broker_port), timeout=5)
            link.broker.settimeout(None)
            link.broker.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link.box.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self._forward(link):
                return  # black-holed: the sockets stay open until close()
        except (OSError, ValueError):
            pass
        for s in (link.box, link.broker):
            if s is not None:
                s.close()

    def _forward(self, link: Link) -> bool:
        """Forward packet by packet until either side closes (True) or the cut (False for a
        black hole, whose sockets must stay open)."""
        assert link.broker is not None
        if self._due(link, Direction.A2B, "before any packet"):
            return self._cut(link)
        ends = {link.box: (Direction.A2B, link.broker), link.broker: (Direction.B2A, link.box)}
        pending = {d: bytearray() for d in Direction}
        while not self._closing.is_set():
            readable, _, _ = select.select(list(ends), [], [], 0.2)
            for src in readable:
                direction, dst = ends[src]
                data = src.recv(65536)
                if not data:
                    return True
                pending[direction] += data
                for packet in split_packets(pending[direction]):
                    dst.sendall(packet)
                    if self._count(link, direction, packet):
                        return self._cut(link)
        return True

    def _count(self, link: Link, direction: Direction, packet: bytes) -> bool:
        """Log the packet; True when the cut is due right after it."""
        if packet[0] >> 4 in _UNNUMBERED:
            link.pings += 1
            return False
        name = describe(packet)
        link.packets[direction].append(name)
        return self._due(link, direction, name)

    def _due(self, link: Link, direction: Direction, last: str) -> bool:
        cut = self.cut
        due = (
            cut is not None
            and link.number == 1
            and cut.direction is direction
            and cut.after == len(link.packets[direction])
        )
        if due:
            self.cut_at = f"{cut} ({last})"
        return due

    def _cut(self, link: Link) -> bool:
        assert self.cut is not None and link.broker is not None
        if self.cut.mode is CutMode.BLACKHOLE:
            with self._lock:
                self._held += [link.box, link.broker]
            return False
        time.sleep(RST_GRACE_S)
        for s in (link.box, link.broker):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return True  # the caller closes both: with linger 0, a close is a reset
