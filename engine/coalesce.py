"""Latest-wins hand-over between threads (pure Python: no Qt, no torch; the desktop imports it too).

A `LatestSlot` holds at most one item: a newer `put` overwrites the older item, so a producer that is
faster than its consumer (slider moves, camera frames) never builds a queue. A consumer either takes the
item (`take`: the GUI's request slots) or reads the newest one without removing it (`get`: the capture
sources, where several readers may look at the same frame). A `Mailbox` groups several
named slots and one small FIFO of commands behind a single condition, so one worker thread can wait
on all of them at once and take them in priority order. `close()` wakes the consumer with `CLOSED`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _Closed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "CLOSED"


CLOSED: Any = _Closed()
"""Sentinel returned by `take` once the slot or mailbox is closed and drained."""


class LatestSlot(Generic[T]):
    """A capacity-1 hand-over: `put` replaces any item not yet taken.

    Thread-safe. `dropped` counts the items overwritten before anyone took them; `put_count` numbers the
    puts, so a reader that does not take can wait for something newer than what it saw (`get`).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._has = False
        self._closed = False
        self.dropped = 0
        self.put_count = 0

    def put(self, item: T) -> T | None:
        """Store `item`; return the older item it replaced (None if the slot was empty).

        Raises:
            RuntimeError: when the slot is closed.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("put on a closed LatestSlot")
            old = self._item if self._has else None
            if self._has:
                self.dropped += 1
            self._item, self._has = item, True
            self.put_count += 1
            self._cond.notify_all()
            return old

    def take(self, timeout: float | None = None) -> T | Any:
        """Remove and return the item, waiting up to `timeout` seconds (None: forever).

        Returns:
            The item; `None` on timeout; `CLOSED` once closed and empty.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._has or self._closed, timeout):
                return None
            if self._has:
                item, self._item, self._has = self._item, None, False
                return item
            return CLOSED

    def get(self, newer_than: int = 0, timeout: float | None = None) -> tuple[int, T | None]:
        """(put number, item) once more than `newer_than` items were put, without removing the item.

        Returns:
            (current put number, None) on timeout, or when the newest item was taken meanwhile.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self.put_count > newer_than, timeout=timeout):
                return self.put_count, None
            return self.put_count, self._item if self._has else None

    def take_nowait(self) -> T | None:
        with self._cond:
            if not self._has:
                return None
            item, self._item, self._has = self._item, None, False
            return item

    def clear(self) -> T | None:
        """Drop the pending item, if any, and return it."""
        return self.take_nowait()

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._has

    def close(self) -> None:
        """Refuse further puts; a waiting `take` returns `CLOSED` once the slot is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass(frozen=True)
class Delivery:
    """One item taken from a `Mailbox`: `channel` is the slot name, or "command" for the FIFO."""

    channel: str
    item: Any


class Mailbox:
    """Named latest-wins slots plus a FIFO of commands, waited on together by one consumer.

    `take` returns commands first (they are rare and must not be lost: open a session, encode a face),
    then the slots in the priority order given at construction.

    Args:
        slots: slot names, highest priority first.
    """

    COMMAND = "command"

    def __init__(self, slots: Iterable[str]) -> None:
        self._order = tuple(slots)
        if self.COMMAND in self._order:
            raise ValueError(f"{self.COMMAND!r} is reserved for the FIFO")
        self._cond = threading.Condition()
        self._slots: dict[str, Any] = {}
        self._commands: deque[Any] = deque()
        self._closed = False
        self.dropped: dict[str, int] = dict.fromkeys(self._order, 0)

    def put(self, channel: str, item: Any) -> Any:
        """Replace the pending item of `channel`; return the replaced item or None."""
        if channel not in self.dropped:
            raise KeyError(f"unknown slot {channel!r}; known: {self._order}")
        with self._cond:
            if self._closed:
                raise RuntimeError("put on a closed Mailbox")
            old = self._slots.pop(channel, None)
            if old is not None:
                self.dropped[channel] += 1
            self._slots[channel] = item
            self._cond.notify_all()
            return old

    def send(self, command: Any) -> None:
        """Append a command to the FIFO (never dropped)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("send on a closed Mailbox")
            self._commands.append(command)
            self._cond.notify_all()

    def _ready(self) -> bool:
        return bool(self._commands) or bool(self._slots) or self._closed

    def _pop(self, channels: tuple[str, ...] | None = None) -> Delivery | None:
        if channels is None and self._commands:
            return Delivery(self.COMMAND, self._commands.popleft())
        for name in self._order:
            if (channels is None or name in channels) and name in self._slots:
                return Delivery(name, self._slots.pop(name))
        return None

    def take(self, timeout: float | None = None) -> Delivery | Any:
        """Wait for the next delivery.

        Returns:
            A `Delivery`; `None` on timeout; `CLOSED` once closed (pending items are discarded then,
            since closing means shutting down).
        """
        with self._cond:
            if not self._cond.wait_for(self._ready, timeout):
                return None
            if self._closed:
                return CLOSED
            return self._pop()

    def take_nowait(self, *channels: str) -> Delivery | None:
        """Pop a pending item of the given slots (all slots and commands when none given)."""
        with self._cond:
            if self._closed:
                return None
            return self._pop(channels or None)

    def pending(self, channel: str) -> bool:
        with self._cond:
            return channel in self._slots

    def clear(self, channel: str) -> Any:
        with self._cond:
            return self._slots.pop(channel, None)

    def close(self) -> None:
        """Wake the consumer with `CLOSED`; later puts and sends raise."""
        with self._cond:
            self._closed = True
            self._slots.clear()
            self._commands.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
