"""A cache of loaded components keyed by what determines them (role, file, backend, device, dtype)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any


class ModelStore:
    """Loads each component once per key; thread-safe so the GUI worker and a CLI can share it."""

    def __init__(self) -> None:
        self._items: dict[Hashable, Any] = {}
        # Re-entrant: a loader may itself get its parts from the store (the pipeline loads its runners).
        self._lock = threading.RLock()

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._items:
                self._items[key] = load()
            return self._items[key]

    def drop(self, predicate: Callable[[Hashable], bool] = lambda _k: True) -> None:
        with self._lock:
            for k in [k for k in self._items if predicate(k)]:
                del self._items[k]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items
