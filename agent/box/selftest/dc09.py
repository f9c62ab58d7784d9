"""Each DC-09 receiver gets one periodic test report (RP / 602, zone 0), on a connection of the
selftest's own, outside the agent's queue."""

from __future__ import annotations

import secrets
import threading
import time

from agent.box.selftest.check import Check
from agent.delivery.dc09.events import BOX_ZONE, Event, EventKind, encode
from agent.delivery.dc09.frame import Address, FrameError, ReplyKind, build
from agent.delivery.dc09.link import Link, LinkError
from agent.delivery.dc09.settings import Receiver, Settings


class _Waiting:
    """What a DC-09 link's wait needs from its thread (agent/delivery/dc09/link.py: Pulse)."""

    stopping = threading.Event()

    def beat(self) -> None:
        pass


def receiver(s: Settings, r: Receiver, site: str) -> Check:
    """One periodic test report, as the agent sends it; a NAK is answered once with the
    receiver's clock, as the agent does, so a box whose clock is off still passes."""
    name = f"dc09 {r.name}"
    where = f"account {r.account}, {s.format}{', AES' if r.key else ''}"
    message = encode(Event(EventKind.PERIODIC_TEST, BOX_ZONE, site), s.format, r.account)
    seq, offset, link = secrets.randbelow(9999) + 1, 0.0, Link(r)
    try:
        for _ in range(2):
            frame = build(
                message.token,
                seq,
                Address(r.account, r.receiver, r.line),
                message.data,
                extended=message.extended,
                sent_at=time.time() + offset,
                key=r.key,
            )
            reply = link.exchange(frame, seq, s.ack_timeout_s, _Waiting())
            if reply is None:
                return Check(
                    name,
                    False,
                    f"no answer within {s.ack_timeout_s:g} s ({where})",
                    "check host, port and tcp/udp with the centre, the firewall, and "
                    "that the receiver runs",
                )
            if reply.kind is ReplyKind.NAK and reply.timestamp is not None:
                offset = reply.timestamp - time.time()
                continue
            if reply.kind is ReplyKind.DUH:
                return Check(
                    name,
                    False,
                    f"answered DUH: it does not take a test report ({where})",
                    "ask the centre to accept periodic test reports "
                    "(RP / 602) on the account, or check dc09.format",
                )
            clock = f"; its clock is {offset:+.0f} s from ours" if abs(offset) > 1 else ""
            return Check(name, True, f"test report acknowledged ({where}){clock}")
        return Check(
            name,
            False,
            f"refused the test report twice (NAK; {where})",
            "check dc09.account, the AES key file and dc09.format with the centre",
        )
    except (LinkError, FrameError) as exc:
        return Check(
            name,
            False,
            str(exc),
            "check host, port and tcp/udp with the centre, "
            "the network path to the receiver, and dc09.account",
        )
    finally:
        link.close()
