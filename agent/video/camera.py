"""One camera's supervisor: runs its source on a thread of its own and hands every packet on.

The video path is a chain of small producers and sinks, as in picamera2's encoders and outputs:
a ``Source`` yields ``Packet``s, a ``Camera`` runs one source on its own thread and hands every
packet to one sink (the segmenter). Nothing here touches the disk.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from agent.errors import CameraError
from agent.video.sources.base import CameraUnavailable, Packet, PacketSink, Source

log = logging.getLogger("agent.cameras")


CameraState = Literal["starting", "streaming", "reconnecting", "failed", "stopped"]


@dataclass(frozen=True, slots=True)
class CameraStatus:
    state: CameraState
    last_packet_at: float | None
    reconnects: int
    gaps: tuple[tuple[float, float], ...]


_HEALTHY_S = 10.0  # a session that streamed this long resets the backoff to its first step
_MAX_GAPS = 100


class Camera:
    """Runs one source on thread ``camera-<id>`` and forwards its packets to ``sink``.

    On disconnect, stall or corrupt data it reconnects with jittered exponential backoff (about
    1 s first, capped at ``backoff_max_s``). Packet times stay increasing across reconnects: the
    new session's pts continue from the last one plus the wall-clock gap, so the segmenter sees
    the gap rather than time going backwards. Nothing raised by the source or the sink leaves the
    thread; a ``CameraUnavailable`` ends it in state ``failed``.
    """

    def __init__(
        self,
        camera_id: str,
        source: Source,
        sink: PacketSink | Callable[[Packet], None],
        *,
        stall_s: float = 5.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.camera_id = camera_id
        self._source = source
        self._sink = sink.packet if isinstance(sink, PacketSink) else sink
        self._stall_s, self._backoff_max_s = stall_s, backoff_max_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # _lock guards the status fields below: written by the camera thread, read by any thread
        # (status requests). Held only to copy or assign, never across I/O or the sink.
        self._lock = threading.Lock()
        self._state: CameraState = "starting"
        self._last_packet_at: float | None = None
        self._reconnects = 0
        self._gaps: deque[tuple[float, float]] = deque(maxlen=_MAX_GAPS)
        # Camera thread only: the last packet out, the pts offset of this session, the open gap.
        self._last_out: Packet | None = None
        self._offset: float | None = None
        self._gap_from: float | None = None
        self._frame_s = 0.04

    # any thread

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"camera-{self.camera_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Returns within ``timeout``. A read blocked inside FFmpeg cannot be interrupted; it
        ends by itself within ``stall_s`` and the (daemon) thread exits then."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "camera %s: still blocked in a read; it exits within %g s",
                    self.camera_id,
                    self._stall_s,
                )
        self._set_state("stopped")

    def status(self) -> CameraStatus:
        with self._lock:
            gaps = tuple(self._gaps)
            return CameraStatus(self._state, self._last_packet_at, self._reconnects, gaps)

    @property
    def state(self) -> CameraState:
        return self.status().state

    @property
    def last_packet_at(self) -> float | None:
        return self.status().last_packet_at

    @property
    def reconnects(self) -> int:
        """Times the camera came back after losing its stream (not failed attempts)."""
        return self.status().reconnects

    @property
    def gaps(self) -> list[tuple[float, float]]:
        """(last packet before, first packet after) wall-clock times of each outage."""
        return list(self.status().gaps)

    # camera thread

    def _run(self) -> None:
        retrying = Retrying(
            wait=wait_exponential_jitter(initial=1, max=self._backoff_max_s, jitter=1),
            retry=retry_if_exception(self._retryable),
            sleep=self._sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )
        while not self._stopping.is_set():
            try:
                retrying(self._session)
            except CameraUnavailable as exc:
                log.error("camera %s: failed, not retrying: %s", self.camera_id, exc)
                self._set_state("failed")
                return
            except CameraError:
                break  # raised only once stopping
        self._set_state("stopped")

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # backoff that stop() cuts short

    def _retryable(self, exc: BaseException) -> bool:
        return not isinstance(exc, CameraUnavailable) and not self._stopping.is_set()

    def _before_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "camera %s: %s; retrying in %.1f s (attempt %d)",
            self.camera_id,
            exc,
            wait,
            state.attempt_number,
        )

    def _session(self) -> None:
        """One connection. Returns when stopping, or after a healthy session ends (so the next
        outage starts again at the first backoff step); raises CameraError otherwise."""
        if self._stopping.is_set():
            return
        started, streamed = time.monotonic(), False
        try:
            info = self._source.open(self._stall_s)
            self._frame_s, self._offset = float(1 / info.fps), None
            for pkt in self._source.packets():
                if self._stopping.is_set():
                    return
                self._forward(pkt)
                streamed = True
            raise CameraError(f"{self._source.name}: stream ended")
        except CameraUnavailable:
            raise
        except CameraError as exc:
            self._lost(streamed)
            if streamed and time.monotonic() - started >= _HEALTHY_S:
                log.warning("camera %s: %s; reconnecting", self.camera_id, exc)
                return
            raise
        except Exception as exc:  # a bug or an unexpected library error: keep the camera alive
            log.exception("camera %s: unexpected error", self.camera_id)
            self._lost(streamed)
            raise CameraError(f"{self._source.name}: {type(exc).__name__}") from exc
        finally:
            self._source.close()

    def _forward(self, pkt: Packet) -> None:
        pkt = self._rebase(pkt)
        gap_from, first = self._gap_from, self._last_out is None
        self._last_out, self._gap_from = pkt, None
        with self._lock:
            self._last_packet_at = pkt.wallclock
            if self._state not in ("failed", "stopped"):
                self._state = "streaming"
            if gap_from is not None:
                self._reconnects += 1
                self._gaps.append((gap_from, pkt.wallclock))
        if gap_from is not None:
            gap = pkt.wallclock - gap_from
            log.info("camera %s: streaming again after a %.1f s gap", self.camera_id, gap)
        elif first:
            log.info("camera %s: streaming from %s", self.camera_id, self._source.name)
        try:
            self._sink(pkt)
        except Exception:
            log.exception("camera %s: sink failed on a packet", self.camera_id)

    def _rebase(self, pkt: Packet) -> Packet:
        if self._offset is None:
            last = self._last_out
            if last is None:
                self._offset = 0.0
            else:
                gap = max(pkt.wallclock - last.wallclock, self._frame_s)
                self._offset = last.pts + gap - pkt.pts
        if self._offset == 0.0:
            return pkt
        dts = None if pkt.dts is None else pkt.dts + self._offset
        return dataclasses.replace(pkt, pts=pkt.pts + self._offset, dts=dts)

    def _lost(self, streamed: bool) -> None:
        if streamed and self._last_out is not None:
            self._gap_from = self._last_out.wallclock
        self._set_state("reconnecting")

    def _set_state(self, state: CameraState) -> None:
        with self._lock:
            if self._state not in ("failed", "stopped"):
                self._state = state
