"""Frame sources for files: a video played on a thread (at its own pace) and a still photo."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.capture.base import CaptureEvent, CaptureFrame, EventKind, EventLog
from engine.coalesce import LatestSlot
from engine.errors import ImageUnreadable

log = logging.getLogger(__name__)


class VideoFileSource:
    """Frames of a video file, newest-only, like a camera.

    Args:
        path: the video file.
        realtime: pace frames at the file's frame rate (False: as fast as they decode).
        loop: start again at the end instead of emitting ENDED.
        capture_factory: path → cv2.VideoCapture-like object (default cv2.VideoCapture).
        on_event: called on the reading thread with each CaptureEvent.

    Raises:
        ImageUnreadable: (from start) the file is missing or OpenCV cannot decode it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        realtime: bool = True,
        loop: bool = False,
        capture_factory: Callable[[str], Any] | None = None,
        on_event: Callable[[CaptureEvent], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.realtime = realtime
        self.loop = loop
        self._factory = capture_factory
        self._events = EventLog(on_event)
        self._slot: LatestSlot[CaptureFrame] = LatestSlot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap: Any = None

    def start(self) -> None:
        """Open the file (errors raise here, in the caller's thread) and start reading."""
        if self.running:
            return
        if not self.path.is_file():
            raise ImageUnreadable(f"The video {self.path} does not exist.", "Check the path.")
        if self._factory is None:
            import cv2

            cap = cv2.VideoCapture(str(self.path))
        else:
            cap = self._factory(str(self.path))
        if cap is None or not cap.isOpened():
            raise ImageUnreadable(f"The video {self.path} cannot be decoded.",
                                  "Convert it to MP4 (H.264) or choose another file.")
        self._cap = cap
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"video-{self.path.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def latest(self, timeout: float | None = 0.0, newer_than: int = -1) -> CaptureFrame | None:
        return self._slot.get(newer_than=max(0, newer_than + 1), timeout=timeout)[1]

    def drain_events(self) -> list[CaptureEvent]:
        return self._events.drain()

    def _run(self) -> None:
        import cv2

        cap = self._cap
        fps = 0.0
        try:
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        except Exception:
            fps = 0.0
        period = 1.0 / fps if self.realtime and 1.0 <= fps <= 240.0 else 0.0
        self._events.emit(EventKind.OPENED, f"Playing {self.path.name}.")
        index = 0
        next_t = time.monotonic()
        try:
            while not self._stop.is_set():
                ok, frame = cap.read()
                if not ok or frame is None:
                    if self.loop and index > 0:
                        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                        continue
                    self._events.emit(EventKind.ENDED, f"{self.path.name} has ended.")
                    break
                self._slot.put(CaptureFrame(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), index, time.monotonic()))
                index += 1
                if period:
                    next_t += period
                    self._stop.wait(max(0.0, next_t - time.monotonic()))
        finally:
            try:
                cap.release()
            except Exception:
                log.debug("releasing %s failed", self.path)


class StillImageSource:
    """A single photo as a frame source (EXIF orientation honoured); no thread.

    Args:
        image: a path, the file's bytes, or an H×W×3 uint8 RGB array.

    Raises:
        ImageUnreadable: the photo cannot be decoded (see engine.images.load_image).
    """

    def __init__(self, image: str | os.PathLike[str] | bytes | np.ndarray) -> None:
        from engine.images import as_rgb_uint8, load_image

        arr = as_rgb_uint8(image) if isinstance(image, np.ndarray) else load_image(image)
        self._frame = CaptureFrame(arr, 0, time.monotonic())
        self._events = EventLog()
        self._running = False

    def start(self) -> None:
        self._running = True
        self._events.emit(EventKind.OPENED, "Photo loaded.")

    def stop(self) -> None:
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def latest(self, timeout: float | None = 0.0, newer_than: int = -1) -> CaptureFrame | None:
        return self._frame if newer_than < 0 else None

    def drain_events(self) -> list[CaptureEvent]:
        return self._events.drain()
