"""What the kernel already knows about our one connection, read from ``TCP_INFO``.

The pacer (pacing.py) needs the path's round trip and how fast bytes get through it. TCP
measures both on every acknowledgement; reading them back costs one system call, and sends
nothing. Linux only: elsewhere, and on kernels older than 4.6 (no ``tcpi_notsent_bytes`` and
``tcpi_min_rtt``), :func:`read` returns None and the uplink keeps today's fixed pacing.

Offsets are those of ``struct tcp_info`` in linux/tcp.h; every field used is a fixed-size
integer, so they are the same on x86-64, arm64 and armhf (Raspberry Pi OS runs 6.1/6.6, which
have all of them). With TLS, paho's socket is an ``ssl.SSLSocket``: getsockopt reads the TCP
socket under it all the same.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass

_TCP_INFO = getattr(socket, "TCP_INFO", 11)
# asm-generic/socket.h (x86, arm, arm64); Python 3.11 does not name it.
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
_STRUCT_BYTES = 232  # as of Linux 6.x; the kernel copies min(this, its own size)

# name -> (struct format, offset) in struct tcp_info
_FIELDS = {
    "snd_mss": ("I", 16),
    "unacked": ("I", 24),  # segments sent and not yet acknowledged
    "bytes_acked": ("Q", 120),
    "notsent_bytes": ("I", 144),
    "min_rtt_us": ("I", 148),  # windowed minimum over tcp_min_rtt_wlen (300 s)
    "bytes_sent": ("Q", 200),  # retransmissions included (4.19)
    "bytes_retrans": ("Q", 208),
}
_NEEDED = 152  # through tcpi_min_rtt (Linux 4.6)


@dataclass(frozen=True, slots=True)
class TcpInfo:
    min_rtt_s: float  # the path's round trip with no queue
    bytes_acked: int  # what the far end has acknowledged (and the SYN, one byte)
    bytes_sent: int  # what has left this box, retransmissions counted once
    notsent_bytes: int  # written by us, not yet sent by the kernel
    snd_mss: int


def read(sock: socket.socket) -> TcpInfo | None:
    """The connection's figures now, or None where the kernel cannot say (see the module)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _STRUCT_BYTES)
    except (OSError, ValueError):  # closed under us: the link loop notices on its own
        return None
    return parse(raw)


def parse(raw: bytes) -> TcpInfo | None:
    if len(raw) < _NEEDED:
        return None
    v = {
        name: struct.unpack_from(fmt, raw, off)[0]
        for name, (fmt, off) in _FIELDS.items()
        if off + struct.calcsize(fmt) <= len(raw)
    }
    if "bytes_retrans" in v:
        sent = v["bytes_sent"] - v["bytes_retrans"]
    else:  # before 4.19: what is in flight is about the unacknowledged segments
        sent = v["bytes_acked"] + v["unacked"] * v["snd_mss"]
    return TcpInfo(
        min_rtt_s=v["min_rtt_us"] / 1e6,
        bytes_acked=v["bytes_acked"],
        bytes_sent=sent,
        notsent_bytes=v["notsent_bytes"],
        snd_mss=v["snd_mss"],
    )


def set_option(sock: socket.socket, level: int, option: int, value: int) -> bool:
    """One unsigned 32-bit socket option, quietly: False when this kernel or this socket
    cannot take it. (Packed: Python passes an int as a signed C int, and SO_MAX_PACING_RATE's
    "no limit" is 2**32 - 1.)"""
    try:
        sock.setsockopt(level, option, struct.pack("=I", value))
    except (OSError, ValueError):
        return False
    return True
