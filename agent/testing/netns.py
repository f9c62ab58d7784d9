"""A private network for a box and its broker: Linux network namespaces, veth pairs, tc.

The fault tests and the uplink bench need a link they can cut, black-hole and shape without
touching the machine's own network, so the box and the broker each get a namespace of their
own (and, with ``router=True``, a router namespace between them, where a school's modem sits).
Nothing is added to the root namespace (no address, no route) and no namespace has a default
route, so test traffic cannot leave through the host whatever state a cut leaves the link in.

Needs root, ``ip`` and ``tc`` (iproute2). Namespaces are named after the process that made
them; ones left by a process that was SIGKILLed (its finalizers never ran) are removed by the
next :meth:`NetLab.up`.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.testing.broker import Mosquitto

MQTT_PORT = 1883  # inside a private namespace the port is always free

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_lab_counter = itertools.count(1)


def sh(*cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a command; with ``check``, a failure raises with its stderr in the message."""
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def run(line: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A command line, its words split on spaces (no name or address here has one); with
    ``ns``, run inside that namespace (``ip netns exec``)."""
    return sh(*(("ip", "netns", "exec", ns) if ns else ()), *line.split(), check=check)


def enter_netns(name: str | None) -> None:
    """Move the CALLING THREAD into a named network namespace (setns(2) is per thread).

    Threads started afterwards from this thread inherit it, so a paho loop_start() called here
    opens its socket inside the namespace. Python 3.11 has no os.setns, hence ctypes.
    """
    if name is None:
        return
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(name: str | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a short-lived thread inside the namespace; threads it starts stay there."""
    if name is None:
        return fn()
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter_netns(name)
            box["value"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    t = threading.Thread(target=body, name=f"in-{name}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


class NsBroker(Mosquitto):
    """The private Mosquitto (agent/testing/broker.py) inside a namespace, on all its
    addresses: SIGKILL-able and restartable on the same port, dying with its parent."""

    def __init__(self, netns: str, workdir: Path, port: int = MQTT_PORT) -> None:
        super().__init__(workdir, port=port, bind="0.0.0.0")
        self.netns = netns

    def command(self, exe: str, conf: Path) -> list[str]:
        return ["ip", "netns", "exec", self.netns, exe, "-c", str(conf)]

    def accepts(self, port: int) -> bool:
        return bool(run_in_netns(self.netns, lambda: super(NsBroker, self).accepts(port)))


def _reap_stale_namespaces() -> None:
    for line in run("ip netns list", check=False).stdout.splitlines():
        m = re.match(r"(lab-(\d+)-\d+-\w+)", line)
        if m and not Path(f"/proc/{m.group(2)}").exists():
            run(f"ip netns del {m.group(1)}", check=False)


class NetLab:
    """box --veth-- srv, or with ``router=True`` box --veth-- rt --veth-- srv::

        box: lo, a_dev a_addr/30                      srv: lo, b_dev b_addr/30, mosquitto :1883
        rt (router only): r_dev toward the box, s_dev toward srv, forwarding

    The agent's MQTT host is ``b_addr``, an address that exists only inside ``srv``. The
    broker and the centre run inside ``srv`` (:func:`run_in_netns`), the agent inside ``box``
    (``ip netns exec``, or :func:`enter_netns` for an in-process daemon's thread).

    The faults all act on the school's side of the path: on the box's own device without a
    router, on the router's device toward the centre with one (the modem and its uplink).
    """

    def __init__(self, workdir: Path, *, router: bool = False) -> None:
        n, pid = next(_lab_counter), os.getpid()
        self.box, self.rt, self.srv = (f"lab-{pid}-{n}-{x}" for x in ("box", "rt", "srv"))
        self.router = router
        tag = f"{pid % 100000}x{n}"
        self.a_dev, self.r_dev, self.s_dev, self.b_dev = (f"{x}{tag}" for x in "arsb")
        net = f"10.213.{(pid + n) % 250 + 1}"
        if router:
            self.a_addr, self.r_addr, self.s_addr, self.b_addr = (
                f"{net}.{i}" for i in (1, 2, 5, 6)
            )
        else:
            self.a_addr, self.b_addr = f"{net}.1", f"{net}.2"
            self.r_addr = self.s_addr = ""
        self.broker = NsBroker(self.srv, workdir / "broker")
        self._shape_args: tuple[str, str, str] | None = None

    @property
    def _egress(self) -> tuple[str, str]:
        """(namespace, device) where the school's traffic toward the centre is shaped."""
        return (self.rt, self.s_dev) if self.router else (self.box, self.a_dev)

    def _pairs(self) -> list[tuple[str, str, str, str]]:
        """Each veth pair: (namespace, device) at both ends."""
        if self.router:
            return [
                (self.box, self.a_dev, self.rt, self.r_dev),
                (self.rt, self.s_dev, self.srv, self.b_dev),
            ]
        return [(self.box, self.a_dev, self.srv, self.b_dev)]

    def up(self) -> NetLab:
        """Build the namespaces and links and start the broker; on failure, take down what
        was built (the caller may skip the test then)."""
        try:
            self._build()
            self.broker.start()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        _reap_stale_namespaces()
        spaces = (self.box, self.rt, self.srv) if self.router else (self.box, self.srv)
        for ns in spaces:
            run(f"ip netns add {ns}")
            run(f"ip -n {ns} link set lo up")
        addrs = {
            self.a_dev: self.a_addr,
            self.r_dev: self.r_addr,
            self.s_dev: self.s_addr,
            self.b_dev: self.b_addr,
        }
        for ns1, dev1, ns2, dev2 in self._pairs():
            run(f"ip link add {dev1} netns {ns1} type veth peer name {dev2} netns {ns2}")
            for ns, dev in ((ns1, dev1), (ns2, dev2)):
                run(f"ip -n {ns} addr add {addrs[dev]}/30 dev {dev}")
                run(f"ip -n {ns} link set {dev} up")
        if self.router:
            net = self.a_addr.rsplit(".", 1)[0]
            run(f"ip -n {self.box} route add {net}.4/30 via {self.r_addr}")
            run(f"ip -n {self.srv} route add {net}.0/30 via {self.s_addr}")
            self.sysctl(self.rt, "net.ipv4.ip_forward", "1")

    def close(self) -> None:
        self.broker.kill()
        for ns in (self.box, self.rt, self.srv):  # deleting one deletes its veth ends, qdiscs
            run(f"ip netns del {ns}", check=False)

    def sysctl(self, ns: str, name: str, value: str) -> bool:
        """Set a per-namespace sysctl (a TCP congestion control, say); False if refused."""
        return run(f"sysctl -qw {name}={value}", ns, check=False).returncode == 0

    # --- faults ---------------------------------------------------------------------------------

    def cut(self, mode: str = "down") -> None:
        """``down``: the centre's side of the cable goes dark (without a router the box's end
        loses carrier, its address and route stay, so TCP just hangs; with one, the router
        answers with ICMP). ``blackhole``: the link stays up, with carrier, but every packet is
        dropped both ways (a ``pfifo limit 0`` qdisc, which accepts nothing; used instead of
        ``netem loss 100%`` because kernels without sch_netem, as in this CI, still have
        pfifo). SYNs vanish too, so connect() hangs to its timeout."""
        if mode == "down":
            ns, dev = self._centre_side
            run(f"ip -n {ns} link set {dev} down")
        elif mode == "blackhole":
            for ns, dev in self._blackhole_devices():
                run(f"tc qdisc replace dev {dev} root pfifo limit 0", ns)
        else:
            raise ValueError(mode)

    @property
    def _centre_side(self) -> tuple[str, str]:
        """(namespace, device) of the cable's end that a ``down`` cut takes dark."""
        return (self.rt, self.s_dev) if self.router else (self.srv, self.b_dev)

    def _blackhole_devices(self) -> list[tuple[str, str]]:
        if self.router:
            return [(self.rt, self.r_dev), (self.rt, self.s_dev)]
        return [(self.box, self.a_dev), (self.srv, self.b_dev)]

    def restore(self) -> None:
        """Undo any cut, and put back the shaping of :meth:`shape`, if any. The shaped device's
        black hole is replaced by the shaping in one step, so no packet passes unshaped."""
        ns, dev = self._centre_side
        run(f"ip -n {ns} link set {dev} up")
        for ns, dev in self._blackhole_devices():
            if self._shape_args is None or (ns, dev) != self._egress:
                run(f"tc qdisc del dev {dev} root", ns, check=False)
        if self._shape_args is not None:
            self.shape(*self._shape_args)

    def shape(self, rate: str = "1mbit", burst: str = "16kb", latency: str = "100ms") -> None:
        """tbf on the school's egress toward the centre (the modem: ``rate``, and a buffer of
        ``latency``); the centre's replies are not shaped."""
        ns, dev = self._egress
        run(f"tc qdisc replace dev {dev} root tbf rate {rate} burst {burst} latency {latency}", ns)
        self._shape_args = (rate, burst, latency)

    def qdisc(self) -> str:
        """``tc -s qdisc show`` of the shaped device: what was sent, dropped, over the limit."""
        ns, dev = self._egress
        return run(f"tc -s qdisc show dev {dev}", ns).stdout.strip()

    def dropped(self) -> int:
        """Packets the shaped device's qdisc has dropped (its buffer full) since it was set."""
        words = self.qdisc().replace(",", " ").replace("(", " ").replace(")", " ").split()
        return int(words[words.index("dropped") + 1]) if "dropped" in words else 0
