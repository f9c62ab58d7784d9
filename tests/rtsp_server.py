"""A real RTSP server for the camera tests: GStreamer's gst-rtsp-server, run as a child process.

Run as a script it is the server; it must run under Debian's ``/usr/bin/python3``, which sees
python3-gi, while the test interpreter (a pyenv build) does not. Imported, it is the handle the
tests use (``RtspServer``): it starts the script, reads the bound port from its first line, kills
it hard (SIGKILL) to simulate a camera that vanishes, restarts it on the same port, or freezes it
(SIGSTOP) to simulate a camera that hangs with its connection open.

Debian packages: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import select
import signal
import subprocess
import sys
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
MOUNT = "/cam"

# A live test pattern with a running clock-like ball; SPS/PPS go in-band before every IDR
# (config-interval=-1) as a real camera configured for streaming does.
PIPELINE = (
    "( videotestsrc is-live=true pattern=ball ! "
    "video/x-raw,width={width},height={height},framerate={fps}/1 ! "
    "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate=400 ! "
    "video/x-h264,profile=constrained-baseline ! "
    "rtph264pay name=pay0 pt=96 config-interval=-1 )"
)


def gst_available() -> str | None:
    """Why the server cannot run here, or None when it can (used for pytest skip reasons)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is missing"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "missing = [n for n in ('videotestsrc', 'x264enc', 'rtph264pay') "
        "if Gst.ElementFactory.find(n) is None]; print(' '.join(missing))"
    )
    try:
        out = subprocess.run(
            [SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=20, check=True
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"gst-rtsp-server not usable from {SYSTEM_PYTHON}: {exc}"
    missing = out.stdout.strip()
    return f"GStreamer elements missing: {missing}" if missing else None


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the test process dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)


class RtspServer:
    """Handle on one server process; ``url`` is valid once ``start()`` has returned."""

    def __init__(
        self, *, port: int = 0, width: int = 320, height: int = 240, fps: int = 25
    ) -> None:
        self.port = port
        self._args = [f"--width={width}", f"--height={height}", f"--fps={fps}"]
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{MOUNT}"

    def start(self, timeout: float = 15.0) -> None:
        """Start the child and wait for the port it bound (the same port again after a kill)."""
        self._proc = subprocess.Popen(
            [SYSTEM_PYTHON, __file__, f"--port={self.port}", *self._args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=_die_with_parent,
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.kill()
            raise RuntimeError(f"RTSP server did not start within {timeout} s: {line!r}")
        self.port = int(line.split()[1])

    def pause(self) -> None:
        """SIGSTOP: the TCP connection stays open and silent, as a hung camera's does."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a camera losing power: no RTSP TEARDOWN, the TCP connection just drops."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None


def _serve(port: int, width: int, height: int, fps: int) -> None:
    import gi  # Debian's python3-gi; present only under /usr/bin/python3

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE.format(width=width, height=height, fps=fps, gop=fps))
    factory.set_shared(True)
    server.get_mount_points().add_factory(MOUNT, factory)
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        raise SystemExit(f"cannot bind 127.0.0.1:{port}")
    print(f"READY {server.get_bound_port()}", flush=True)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    loop.run()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args(argv)
    _serve(args.port, args.width, args.height, args.fps)


if __name__ == "__main__":
    main(sys.argv[1:])
