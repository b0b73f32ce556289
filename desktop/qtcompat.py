"""Work-arounds for bugs of the Qt binding.

PySide6 6.12.0 on CPython 3.11: `SignalInstance.emit()` returns `True`/`False` without taking a
reference, so every discarded return value lowers the refcount of the `True` singleton; after a few
hundred emissions Python aborts with "Fatal Python error: bool_dealloc". `emit()` here restores the
reference. It is harmless where the bug is fixed (the bools are never freed anyway; on 3.12+ they
are immortal and Py_IncRef does nothing).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any


@functools.cache
def _incref() -> Callable[[Any], None]:
    return ctypes.PYFUNCTYPE(None, ctypes.py_object)(("Py_IncRef", ctypes.pythonapi))


def emit(signal: Any, *args: Any) -> None:
    """`signal.emit(*args)`, keeping the refcount of its bool return value balanced."""
    result = signal.emit(*args)
    if result is True or result is False:
        _incref()(result)


def binding_leaks_references(calls: int = 64) -> bool:
    """True when void calls of the Qt binding drop references to None (PySide6 6.12.0 on CPython 3.11).

    Such a binding crashes the process ("Fatal Python error: none_dealloc") once None's refcount
    reaches zero, which a busy GUI does within minutes; the app warns at start-up.
    """
    import sys

    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(calls):
        probe.setObjectName("probe")
    leaked = before - sys.getrefcount(None)
    if leaked > 0:  # give the references back so the probe itself does no harm
        for _ in range(leaked):
            _incref()(None)
    return leaked >= calls // 2
