"""Cooperative cancellation shared between the GUI thread and the inference worker."""

from __future__ import annotations

import threading

from engine.errors import Cancelled


class CancelToken:
    """A one-way flag: `cancel()` from any thread, `raise_if_cancelled()` at step boundaries."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()
