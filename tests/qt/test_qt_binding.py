"""The installed Qt binding does not leak references (the reason PySide6 is pinned below 6.12)."""

from __future__ import annotations


def test_installed_qt_binding_keeps_the_refcount_of_true_balanced(qapp):
    """PySide6 6.12.0 + CPython 3.11 drop a reference to True per `emit()` (pinned below 6.12)."""
    import sys

    from PySide6.QtCore import QObject, Signal

    class Emitter(QObject):
        ping = Signal(int)

    e = Emitter()
    got: list[int] = []
    e.ping.connect(got.append)
    before = sys.getrefcount(True)
    for i in range(3000):
        e.ping.emit(i)
    assert len(got) == 3000
    assert sys.getrefcount(True) >= before - 5  # the broken binding: before - 3000
