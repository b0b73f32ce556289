"""Frame sources behind one interface: frames, events, and a capacity-1 latest-frame slot
(`engine.coalesce.LatestSlot`).

A source produces RGB uint8 frames on its own thread (plain Python threads; the desktop wraps them in
Qt signals). Consumers never queue frames: they read the newest one, so a slow consumer sees fresh
frames instead of an ever-growing backlog. Hardware trouble (no camera, unplugged camera) is an
event with a message, never an exception in the consumer's thread and never a hang.
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class CaptureFrame:
    """One frame: H×W×3 uint8 RGB, its running number and capture time (time.monotonic())."""

    image: np.ndarray
    index: int
    timestamp: float


class EventKind(enum.StrEnum):
    """What happened to a source; the value is the serialized name."""

    OPENED = "opened"
    UNAVAILABLE = "unavailable"  # could not be opened (absent, busy, no permission); retrying
    LOST = "lost"  # stopped delivering frames (unplugged); retrying
    RECOVERED = "recovered"  # frames again after UNAVAILABLE/LOST
    STALLED = "stalled"  # no frame for a while although the device looks open
    ENDED = "ended"  # a video file reached its end
    STOPPED = "stopped"


@dataclass(frozen=True)
class CaptureEvent:
    """A state change of a source, with a message to show the user."""

    kind: EventKind
    message: str
    timestamp: float = field(default_factory=time.monotonic)


class FrameSource(Protocol):
    """What the GUI and the burst capture use, whatever the source."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def running(self) -> bool: ...

    def latest(self, timeout: float | None = 0.0, newer_than: int = -1) -> CaptureFrame | None: ...

    def drain_events(self) -> list[CaptureEvent]: ...


class EventLog:
    """Events kept for polling (bounded) and pushed to an optional callback."""

    def __init__(self, on_event: Callable[[CaptureEvent], None] | None = None, maxlen: int = 64) -> None:
        self._on_event = on_event
        self._events: collections.deque[CaptureEvent] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.last: CaptureEvent | None = None

    def emit(self, kind: EventKind, message: str) -> CaptureEvent:
        ev = CaptureEvent(kind, message)
        with self._lock:
            self._events.append(ev)
            self.last = ev
        if self._on_event is not None:
            try:
                self._on_event(ev)
            except Exception:  # a consumer's bug must not kill the capture thread
                import logging

                logging.getLogger(__name__).exception("capture event callback failed")
        return ev

    def drain(self) -> list[CaptureEvent]:
        with self._lock:
            out = list(self._events)
            self._events.clear()
        return out
