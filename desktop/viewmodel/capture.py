"""Capture, burst capture and opening a file — each behind the consent note — without widgets or Qt.

The window calls `capture()`, `burst()` and `open_path()`; photos (from the file dialog, a drop or the
command line) become identities after consent, our own PNGs restore their settings instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from desktop.viewmodel.events import Event, TimerFactory

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BURST_FRAMES = 8
BURST_INTERVAL_MS = 120


class SettingsStore(Protocol):
    """The part of QSettings the controllers use (a dict-backed one in tests)."""

    def value(self, key: str, default: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...


class ConsentGate:
    """Runs an action once the user agreed to the consent note (asked once, remembered in the settings).

    Args:
        store: where the answer is kept ("consent/accepted").
        ask: shows the note and calls back with the answer; set by the window (None: nobody can agree).
    """

    KEY = "consent/accepted"

    def __init__(self, store: SettingsStore, ask: Callable[[Callable[[bool], None]], None] | None = None) -> None:
        self.store = store
        self.ask = ask
        self.asking = False

    @property
    def accepted(self) -> bool:
        return str(self.store.value(self.KEY, "false")).lower() == "true"

    def then(self, action: Callable[[], None]) -> None:
        if self.accepted:
            action()
            return
        if self.ask is None:
            return

        def answered(ok: bool) -> None:
            self.asking = False
            if ok:
                self.store.setValue(self.KEY, "true")
                action()

        self.asking = True
        self.ask(answered)


class CameraFrames(Protocol):
    running: bool

    def latest_frame(self) -> np.ndarray | None: ...


class CaptureController:
    """Turns capture intents into encodes on `studio`, after consent.

    Args:
        studio: `StudioState` (capture, capture_burst, restore_request, status_message).
        client: the bridge's file side (`read_request`, `load_image`); its reports come back through
            `on_request_loaded`, `on_request_failed` and `on_image_loaded`.
        camera: the running camera (`running`, `latest_frame()`).
        consent: the gate every capture passes.
        timer: makes the burst's repeating timer.
    """

    def __init__(self, studio: Any, client: Any, camera: CameraFrames, consent: ConsentGate, timer: TimerFactory,
                 burst_frames: int = BURST_FRAMES) -> None:
        self.studio = studio
        self.client = client
        self.camera = camera
        self.consent = consent
        self.burst_frames = burst_frames
        self.still_shown = Event()  # uint8 RGB: a photo that is being captured (the camera panel shows it)
        self.status = Event()  # str
        self._burst: list[np.ndarray] = []
        self._bursting = False
        self._tick = timer(self._burst_tick)
        self._pending_png: set[str] = set()

    # -- camera ---------------------------------------------------------------------------------
    def capture(self) -> bool:
        """Encode the camera's newest frame; False (and a status line) without a running camera."""
        frame = self.camera.latest_frame() if self.camera.running else None
        if frame is None:
            self.status.emit("Start the camera, or open a photo (Ctrl+O), to capture a face.")
            return False
        self.consent.then(lambda: self.studio.capture(frame))
        return True

    def burst(self) -> bool:
        """Collect `burst_frames` distinct frames, then encode them together (the best are kept)."""
        if not self.camera.running:
            self.status.emit("Start the camera to capture a burst.")
            return False

        def begin() -> None:
            self._burst = []
            self._bursting = True
            self.status.emit("Burst: hold still…")
            self._tick.start(BURST_INTERVAL_MS)

        self.consent.then(begin)
        return True

    @property
    def bursting(self) -> bool:
        return self._bursting

    def _burst_tick(self) -> None:
        frame = self.camera.latest_frame()
        if frame is not None and (not self._burst or frame is not self._burst[-1]):
            self._burst.append(frame)
        if len(self._burst) >= self.burst_frames or not self.camera.running:
            self.stop_burst()
            if frames := self._burst:
                self._burst = []
                self.studio.capture_burst(frames)
            return
        self._tick.start(BURST_INTERVAL_MS)

    def stop_burst(self) -> None:
        self._bursting = False
        self._tick.stop()

    # -- files ----------------------------------------------------------------------------------
    def open_path(self, path: str | Path) -> bool:
        """Open a file: one of our PNGs restores its settings, any other photo becomes an identity.

        Returns False (and a status line) for a file that is not an image."""
        path = str(Path(path).absolute())  # a path typed by the user is relative to the current directory
        if not path.lower().endswith(IMAGE_SUFFIXES):
            self.status.emit(f"{Path(path).name} is not a photo: open a PNG, JPEG, WebP or BMP image.")
            return False
        if path.lower().endswith(".png"):
            self._pending_png.add(path)
            self.client.read_request(path)
        else:
            self.client.load_image(path)
        return True

    def on_request_loaded(self, path: str, request: Any) -> None:
        self._pending_png.discard(path)
        self.studio.restore_request(request, source=path)

    def on_request_failed(self, path: str, _info: Any) -> None:
        if path in self._pending_png:  # a PNG without our settings: a photo like any other
            self._pending_png.discard(path)
            self.client.load_image(path)

    def on_image_loaded(self, path: str, image: np.ndarray) -> None:
        self.still_shown.emit(image)
        self.consent.then(lambda: self.studio.capture(image, name=Path(path).stem))
