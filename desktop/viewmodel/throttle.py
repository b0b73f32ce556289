"""A leading- and trailing-edge throttle (≈30 Hz for sliders), on any single-shot timer."""

from __future__ import annotations

import time
from collections.abc import Callable

from desktop.viewmodel.events import TimerFactory


class Throttle:
    """Calls `fn` at once on the first `poke`, then at most once per `interval_ms`, and always once
    after the last poke (trailing edge) so the final value is never lost.

    Args:
        timer: makes the single-shot timer for the trailing call (`desktop.views.binding.qt_timer` in the app).
        clock: seconds, monotonic (tests pass a manual clock).
    """

    def __init__(self, fn: Callable[[], object], interval_ms: int, timer: TimerFactory,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fn = fn
        self._interval = interval_ms
        self._timer = timer(self._fire_trailing)
        self._clock = clock
        self._last = float("-inf")
        self._pending = False
        self.calls = 0

    def poke(self) -> None:
        wait_ms = self._interval - (self._clock() - self._last) * 1000
        if wait_ms <= 0 and not self._timer.is_active():
            self._call()
        else:
            self._pending = True
            if not self._timer.is_active():
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
        self._last = self._clock()
        self.calls += 1
        self._fn()
