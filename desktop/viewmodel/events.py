"""Observer lists and timers for the view models, so their state and rules run without a QApplication.

`Event` is spelled like a Qt signal (`connect`, `disconnect`, `emit`) so views connect to view models
as they connect to widgets; it calls its observers synchronously on the caller's thread, which for
the view models is always the GUI thread (the Qt adapter in `desktop.views.binding` moves the
bridge's worker-thread signals there first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class Event:
    """A list of callbacks called in connection order by `emit(*args)`."""

    def __init__(self) -> None:
        self._slots: list[Callable[..., Any]] = []
        self._blocked = 0

    def connect(self, slot: Callable[..., Any]) -> None:
        self._slots.append(slot)

    def disconnect(self, slot: Callable[..., Any]) -> None:
        self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        if self._blocked:
            return
        for slot in list(self._slots):
            slot(*args)

    @contextmanager
    def blocked(self) -> Iterator[None]:
        """Drop emissions inside the block (a batch of changes reported once afterwards)."""
        self._blocked += 1
        try:
            yield
        finally:
            self._blocked -= 1


class Timer(Protocol):
    """A single-shot timer calling the callback it was made with (Qt's QTimer in the app)."""

    def start(self, ms: int) -> None: ...

    def stop(self) -> None: ...

    def is_active(self) -> bool: ...


TimerFactory = Callable[[Callable[[], object]], Timer]
