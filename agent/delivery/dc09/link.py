"""One receiver's socket: send a frame, wait for the reply to it, never longer than asked.

TCP keeps one connection open between messages (a press then costs one round trip, not a
handshake too); any failure closes it and the next attempt connects anew. UDP uses a
connected datagram socket, so only the receiver's address can answer, and a datagram is
one frame. Every wait is cut into slices of at most 0.5 s that call ``pulse.beat()``, so the
thread keeps the supervisor's rule (a beat at least every second) through a connect or an
ACK timeout, and a stop is seen within a slice.

A reply to an earlier message (a late ACK with another sequence number, after a resend) is
skipped, not taken for this one. A reply that is not a valid DC-09 frame raises
:class:`FrameError` at once (UDP), or when the wait ends with only such bytes (TCP): the caller
counts the attempt as failed, as if nothing had come.

Host names are resolved by the system resolver, which blocks: give receivers as addresses
where the network's DNS may be slow (docs/dc09.md).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import threading
import time
from typing import Any, Protocol

from agent.delivery.dc09.frame import FrameError, Reply, ReplyKind, parse_reply
from agent.delivery.dc09.settings import Receiver, Transport
from agent.errors import AgentError

log = logging.getLogger("agent.dc09.link")

SLICE_S = 0.5
_MAX_BUFFER = 8192  # a DC-09 frame is at most 4105 bytes with LF, header and CR


class LinkError(AgentError, ConnectionError):
    """The receiver could not be reached or the connection broke."""


class Pulse(Protocol):
    """What a wait needs from its thread: agent.supervision.Worker is one."""

    stopping: threading.Event

    def beat(self) -> None: ...


class Link:
    """The socket to one receiver; opened on first use, never in the constructor."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self._sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock, self._buf = None, b""

    def exchange(self, frame: bytes, seq: int, timeout: float, pulse: Pulse) -> Reply | None:
        """Send ``frame`` (sequence number ``seq``) and return the receiver's reply to it, or
        None if none came within ``timeout`` seconds (or the thread is stopping)."""
        deadline = time.monotonic() + timeout
        if self._sock is not None and self._peer_closed(self._sock):
            self.close()  # the receiver restarted since: connect again, no attempt lost
        sock = self._sock or self._open(deadline, pulse)
        try:
            sock.sendall(frame)
        except OSError as exc:
            self.close()
            raise LinkError(f"{self.receiver.name}: sending failed: {exc}") from exc
        while not pulse.stopping.is_set():
            reply = self._next_reply(seq)
            if reply is not None:
                return reply
            left = deadline - time.monotonic()
            if left <= 0:
                break
            pulse.beat()
            readable, _, _ = select.select([sock], [], [], min(left, SLICE_S))
            if readable:
                self._read(sock)
        if self._buf.strip():
            junk, self._buf = self._buf, b""
            raise FrameError(f"{self.receiver.name} answered {junk[:80]!r}, not a DC-09 frame")
        return None

    # --- inside ------------------------------------------------------------------------------

    def _open(self, deadline: float, pulse: Pulse) -> socket.socket:
        r = self.receiver
        kind = socket.SOCK_STREAM if r.transport is Transport.TCP else socket.SOCK_DGRAM
        try:
            infos = socket.getaddrinfo(r.host, r.port, type=kind)
        except OSError as exc:
            raise LinkError(f"{r.name}: cannot resolve {r.host}: {exc}") from exc
        family, _, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._connect(sock, addr, deadline, pulse)
            else:
                sock.connect(addr)  # a datagram socket only records the peer
        except BaseException:
            sock.close()
            raise
        self._sock, self._buf = sock, b""
        return sock

    def _connect(
        self, sock: socket.socket, addr: tuple[Any, ...], deadline: float, pulse: Pulse
    ) -> None:
        err = sock.connect_ex(addr)
        while err == errno.EINPROGRESS:
            left = deadline - time.monotonic()
            if left <= 0 or pulse.stopping.is_set():
                raise LinkError(f"{self.receiver.name}: no connection within the ACK timeout")
            pulse.beat()
            _, writable, _ = select.select([], [sock], [], min(left, SLICE_S))
            if writable:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise LinkError(f"{self.receiver.name}: cannot connect: {os.strerror(err)}")

    def _peer_closed(self, sock: socket.socket) -> bool:
        """A kept TCP connection the receiver has closed or reset (only TCP keeps one)."""
        if self.receiver.transport is Transport.UDP:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(_MAX_BUFFER)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # UDP: ICMP port unreachable arrives here as ECONNREFUSED
            self.close()
            raise LinkError(f"{self.receiver.name}: {exc.strerror or exc}") from exc
        if not data:
            self.close()
            raise LinkError(f"{self.receiver.name}: the receiver closed the connection")
        if self.receiver.transport is Transport.UDP:
            self._buf = b""  # a datagram is one whole frame; whatever came before is stale
        self._buf += data
        if len(self._buf) > _MAX_BUFFER:
            self.close()
            raise FrameError(f"{self.receiver.name} sent {len(data)} bytes without a frame end")

    def _next_reply(self, seq: int) -> Reply | None:
        """The first complete frame in the buffer that answers ``seq``; stale ones skipped."""
        while (end := self._buf.find(b"\r")) >= 0:
            start = self._buf.rfind(b"\n", 0, end)
            raw, rest = self._buf[max(start, 0) : end + 1], self._buf[end + 1 :]
            if start > 0:
                log.warning(
                    "%s: %d bytes before a frame ignored: %r",
                    self.receiver.name,
                    start,
                    self._buf[: min(start, 80)],
                )
            self._buf = rest
            reply = parse_reply(raw, self.receiver.key)
            if reply.kind is ReplyKind.NAK or reply.seq == seq:
                if reply.account is not None and reply.account != self.receiver.account:
                    raise FrameError(
                        f"{self.receiver.name} answered for account "
                        f"{reply.account}, not ours ({self.receiver.account})"
                    )
                return reply
            log.info(
                "%s: a late %s for message %04d skipped (waiting for %04d)",
                self.receiver.name,
                reply.kind,
                reply.seq,
                seq,
            )
        if self.receiver.transport is Transport.UDP and self._buf:
            junk, self._buf = self._buf, b""
            raise FrameError(f"{self.receiver.name} answered {junk[:80]!r}, not a DC-09 frame")
        return None
