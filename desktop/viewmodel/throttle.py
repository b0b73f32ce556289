"""A leading- and trailing-edge throttle on the GUI thread (≈30 Hz for sliders)."""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer


class Throttle(QObject):
    """Calls `fn` at once on the first `poke`, then at most once per `interval_ms`, and always once
    after the last poke (trailing edge) so the final value is never lost."""

    def __init__(self, fn: Callable[[], None], interval_ms: int = 33, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._fn = fn
        self._interval = interval_ms
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._fire_trailing)
        self._last = 0.0
        self._pending = False
        self.calls = 0

    def poke(self) -> None:
        now = time.monotonic()
        wait_ms = self._interval - (now - self._last) * 1000
        if wait_ms <= 0 and not self._timer.isActive():
            self._call()
        else:
            self._pending = True
            if not self._timer.isActive():
                self._timer.start(max(1, int(wait_ms)))

    def flush(self) -> None:
        """Run a pending trailing call now."""
        if self._pending:
            self._timer.stop()
            self._call()

    def cancel(self) -> None:
        self._timer.stop()
        self._pending = False

    def _fire_trailing(self) -> None:
        if self._pending:
            self._call()

    def _call(self) -> None:
        self._pending = False
        self._last = time.monotonic()
        self.calls += 1
        self._fn()
