"""Webcam frames through OpenCV on a capture thread, surviving absent and unplugged cameras.

The capture object is injected (`capture_factory`, default `cv2.VideoCapture`): that is the hardware
boundary, and tests replace it with a scripted fake. Failures become events (UNAVAILABLE, LOST,
RECOVERED, STALLED) and the thread keeps retrying until `stop()`; `stop()` never blocks for long even
if a driver call hangs (the thread is a daemon and the join has a timeout).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.capture.base import CaptureEvent, CaptureFrame, EventKind, EventLog
from engine.coalesce import LatestSlot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraInfo:
    """A camera that opened and delivered a frame when probed."""

    index: int
    name: str
    width: int
    height: int


def _default_factory(device: int) -> Any:
    import cv2

    return cv2.VideoCapture(device)


def _v4l_name(index: int) -> str:
    p = Path(f"/sys/class/video4linux/video{index}/name")
    try:
        return p.read_text(encoding="utf-8").strip() if sys.platform.startswith("linux") else ""
    except OSError:
        return ""


def list_cameras(max_index: int = 5, capture_factory: Callable[[int], Any] | None = None) -> list[CameraInfo]:
    """Probe camera indices 0..max_index-1 and list those that deliver a frame.

    Args:
        max_index: how many indices to try (opening a camera takes up to a second on some systems).
        capture_factory: index → cv2.VideoCapture-like object (default cv2.VideoCapture).

    Returns:
        The working cameras with their default resolution.
    """
    factory = capture_factory or _default_factory
    found = []
    for i in range(max_index):
        cap = None
        try:
            cap = factory(i)
            if cap is None or not cap.isOpened():
                continue
            ok, frame = cap.read()
            if ok and frame is not None:
                h, w = frame.shape[:2]
                found.append(CameraInfo(i, _v4l_name(i) or f"Camera {i}", int(w), int(h)))
        except Exception as exc:  # a broken driver must not break the device list
            log.debug("probing camera %d failed: %s", i, exc)
        finally:
            if cap is not None:
                try:
                    cap.release()
                except Exception:
                    log.debug("releasing camera %d failed", i)
    return found


class WebcamSource:
    """Frames from one camera on a background thread, newest-only.

    Args:
        device: camera index.
        width, height: requested resolution (the camera may choose another; frames carry their size).
        capture_factory: index → cv2.VideoCapture-like object (isOpened, read, set, release).
        on_event: called on the capture thread with each CaptureEvent (wrap it in a queued signal).
        retry_interval: seconds between reopen attempts while the camera is absent.
        fail_after: consecutive failed reads that count as "camera lost".
        stall_after: seconds without a frame after which `latest()` reports STALLED once.
    """

    def __init__(
        self,
        device: int = 0,
        width: int = 640,
        height: int = 480,
        *,
        capture_factory: Callable[[int], Any] | None = None,
        on_event: Callable[[CaptureEvent], None] | None = None,
        retry_interval: float = 1.0,
        fail_after: int = 3,
        stall_after: float = 3.0,
    ) -> None:
        self.device = int(device)
        self.width = int(width)
        self.height = int(height)
        self._factory = capture_factory or _default_factory
        self._events = EventLog(on_event)
        self.retry_interval = float(retry_interval)
        self.fail_after = max(1, int(fail_after))
        self.stall_after = float(stall_after)
        self._slot: LatestSlot[CaptureFrame] = LatestSlot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_frame_time = 0.0
        self._stall_reported = False
        self._index = 0

    # -- control ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the capture thread (returns at once; problems arrive as events)."""
        if self.running:
            return
        self._stop.clear()
        self._last_frame_time = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"webcam-{self.device}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and release the camera; waits at most `timeout` seconds."""
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                log.warning("camera %d did not stop within %.1f s (driver call blocked)", self.device, timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- consumer side ------------------------------------------------------------------------------
    def latest(self, timeout: float | None = 0.0, newer_than: int = -1) -> CaptureFrame | None:
        """The newest frame (waiting up to `timeout` for one with index > `newer_than`), or None."""
        _seq, frame = self._slot.get(newer_than=max(0, newer_than + 1), timeout=timeout)
        stalled = time.monotonic() - self._last_frame_time > self.stall_after
        if frame is None and stalled and self.running and not self._stall_reported:
            self._stall_reported = True
            self._events.emit(EventKind.STALLED, f"Camera {self.device} has sent no picture for "
                              f"{self.stall_after:.0f} s. Check the cable or close other apps using it.")
        return frame

    def drain_events(self) -> list[CaptureEvent]:
        """Events since the last call (oldest first)."""
        return self._events.drain()

    @property
    def last_event(self) -> CaptureEvent | None:
        return self._events.last

    # -- capture thread -----------------------------------------------------------------------------
    def _open(self) -> Any | None:
        try:
            cap = self._factory(self.device)
        except Exception as exc:
            log.debug("opening camera %d raised %s", self.device, exc)
            return None
        try:
            if cap is None or not cap.isOpened():
                if cap is not None:
                    cap.release()
                return None
            import cv2

            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        except Exception as exc:
            log.debug("configuring camera %d raised %s", self.device, exc)
        return cap

    def _run(self) -> None:
        import cv2

        was_lost = False
        announced_unavailable = False
        failures = 0
        cap = None
        try:
            while not self._stop.is_set():
                if cap is None:
                    cap = self._open()
                    if cap is None:
                        if not announced_unavailable and not was_lost:
                            self._events.emit(
                                EventKind.UNAVAILABLE,
                                f"Camera {self.device} could not be opened: is it connected and not used by "
                                "another application? Retrying…",
                            )
                            announced_unavailable = True
                        self._stop.wait(self.retry_interval)
                        continue
                    if was_lost or announced_unavailable:
                        self._events.emit(EventKind.RECOVERED, f"Camera {self.device} is back.")
                    else:
                        self._events.emit(EventKind.OPENED, f"Camera {self.device} opened.")
                    was_lost = announced_unavailable = False
                    failures = 0
                try:
                    ok, frame = cap.read()
                except Exception as exc:
                    log.debug("camera %d read raised %s", self.device, exc)
                    ok, frame = False, None
                if not ok or frame is None or getattr(frame, "ndim", 0) != 3:
                    failures += 1
                    if failures >= self.fail_after:
                        self._events.emit(
                            EventKind.LOST,
                            f"Camera {self.device} stopped sending pictures (unplugged?). Reconnecting…",
                        )
                        was_lost = True
                        self._release(cap)
                        cap = None
                        self._stop.wait(self.retry_interval)
                    continue
                failures = 0
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                now = time.monotonic()
                self._last_frame_time = now
                self._stall_reported = False
                self._slot.put(CaptureFrame(rgb, self._index, now))
                self._index += 1
        finally:
            if cap is not None:
                self._release(cap)
            self._events.emit(EventKind.STOPPED, f"Camera {self.device} stopped.")

    def _release(self, cap: Any) -> None:
        try:
            cap.release()
        except Exception as exc:
            log.debug("releasing camera %d raised %s", self.device, exc)
