"""The thin Qt adapter of the Qt-free view models: timers, and the bridge's reports on the GUI thread.

The bridge (`desktop.engine_client.EngineClient`) emits its Qt signals on worker threads; the view
models are plain Python, so every report is re-posted through one queued signal of a QObject that
lives on the GUI thread and only then handed to the view model, in emission order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from desktop.engine_client import EngineClient
from desktop.viewmodel.capture import CaptureController
from desktop.viewmodel.studio import StudioState


class QtTimer:
    """`desktop.viewmodel.events.Timer` on a single-shot QTimer."""

    def __init__(self, callback: Callable[[], object], parent: QObject | None = None) -> None:
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(callback)

    def start(self, ms: int) -> None:
        self._timer.start(ms)

    def stop(self) -> None:
        self._timer.stop()

    def is_active(self) -> bool:
        return self._timer.isActive()


def qt_timer(callback: Callable[[], object]) -> QtTimer:
    return QtTimer(callback)


class EngineBinding(QObject):
    """Routes the bridge's signals to the studio and capture controllers on the GUI thread."""

    _deliver = Signal(object, object)  # handler, args

    def __init__(self, client: EngineClient, studio: StudioState, capture: CaptureController,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._closed = False
        self._deliver.connect(self._run)
        for signal, handler in (
            (client.result_ready, studio.on_result),
            (client.progress, studio.on_progress),
            (client.cancelled, studio.on_cancelled),
            (client.failed, studio.on_failed),
            (client.busy_changed, studio.on_busy),
            (client.face_preview_ready, studio.on_face_preview),
            (client.identity_ready, studio.on_identity),
            (client.burst_ready, studio.on_burst),
            (client.likeness_ready, studio.on_likeness),
            (client.models_checked, studio.on_models),
            (client.models_progress, studio.models_progress.emit),
            (client.catalog_ready, studio.on_catalog),
            (client.device_resolved, studio.on_device),
            (client.state_changed, studio.engine_state.emit),
            (client.backends_ready, studio.backends_changed.emit),
            (client.saved, studio.saved.emit),
            (client.request_loaded, capture.on_request_loaded),
            (client.request_failed, capture.on_request_failed),
            (client.image_loaded, capture.on_image_loaded),
        ):
            self._route(signal, handler)

    def _route(self, signal: Any, handler: Callable[..., None]) -> None:
        signal.connect(lambda *args: self._deliver.emit(handler, args))

    def close(self) -> None:
        """Drop every report still queued or yet to come: after shutdown a handler could ask the closed
        bridge for more (a new identity asks for its face preview)."""
        self._closed = True

    def _run(self, handler: Callable[..., None], args: tuple) -> None:
        if not self._closed:
            handler(*args)
