"""A guard against a broken Qt binding.

PySide6 6.12.0 on CPython 3.11 drops a reference to None on every void call and to True on every
signal emit; a busy GUI aborts within minutes ("Fatal Python error: none_dealloc"). pyproject pins
PySide6 below 6.12; this check warns at start-up if a broken binding was installed anyway.
"""

from __future__ import annotations

import ctypes


def binding_leaks_references(calls: int = 64) -> bool:
    """True when void calls of the Qt binding drop references to None (PySide6 6.12.0 on CPython 3.11)."""
    import sys

    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(calls):
        probe.setObjectName("probe")
    leaked = before - sys.getrefcount(None)
    if leaked > 0:  # give the references back so the probe itself does no harm
        incref = ctypes.PYFUNCTYPE(None, ctypes.py_object)(("Py_IncRef", ctypes.pythonapi))
        for _ in range(leaked):
            incref(None)
    return leaked >= calls // 2
