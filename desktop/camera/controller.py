"""The camera thread, the face-analysis thread and the Qt object that reports both to the GUI.

Frames go GUI-wards through a latest-wins slot: the camera thread emits `frame_ready` only when the
slot was empty, so a busy GUI thread receives one notification and takes the newest frame, never a
backlog. Face tracking runs on its own thread from another latest-wins slot, so a slow detector
lowers the overlay rate, not the video rate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from desktop.camera.sources import FrameSource, open_source
from desktop.engine_client import face_analysis
from engine.api import FaceBox, QualityReport
from engine.coalesce import CLOSED, LatestSlot
from engine.errors import CameraError, EngineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceAnalysis:
    """What the tracker saw in one frame: the face box (or None) and the capture gates."""

    frame_index: int
    box: FaceBox | None
    quality: QualityReport | None
    elapsed_s: float = 0.0
    frame_size: tuple[int, int] = (0, 0)  # width, height
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


class FaceAnalyzer:
    """Face box, landmarks and quality gates from engine.faces (track + quality).

    Raises:
        ImportError: engine.faces is not available (dlib missing).
    """

    def __init__(self) -> None:
        track, self._quality = face_analysis()
        self._tracker = track.FaceTracker()

    def reset(self) -> None:
        """Forget the tracked face (a new source starts)."""
        self._tracker.reset()

    def __call__(self, frame: np.ndarray) -> tuple[FaceBox | None, QualityReport | None]:
        box = self._tracker.update(frame)
        report = self._quality.assess(frame, box) if box is not None else QualityReport(
            False, ("No face found: face the camera, with your whole face in the frame.",))
        return box, report


AnalyzerFactory = Callable[[], Callable[[np.ndarray], tuple[FaceBox | None, QualityReport | None]]]


class CameraController(QObject):
    """Runs one frame source on a camera thread and face analysis on a second thread.

    Args:
        analyzer_factory: builds the analyzer on the analysis thread (default `FaceAnalyzer`).
        source_opener: opens a source from its spec (default `desktop.camera.sources.open_source`).
    """

    frame_ready = Signal()
    analysis_ready = Signal(object)  # FaceAnalysis
    analysis_unavailable = Signal(str)
    state_changed = Signal(str)  # "running", "stopped"
    failed = Signal(object)  # EngineError
    message = Signal(str)  # camera state for the user ("camera unplugged, retrying…")
    cameras_found = Signal(object)  # list of engine.capture.webcam.CameraInfo

    def __init__(self, analyzer_factory: AnalyzerFactory | None = None,
                 source_opener: Callable[[str], FrameSource] = open_source,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._analyzer_factory = analyzer_factory or FaceAnalyzer
        self._opener = source_opener
        self._gui_slot: LatestSlot[tuple[int, np.ndarray]] = LatestSlot()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._spec = ""
        self._latest: tuple[int, np.ndarray] | None = None
        self._latest_lock = threading.Lock()
        self.frames = 0
        # one analyzer for the controller's life: dlib's landmark model loads once (0.5–1 s holding the GIL)
        self._analyzer: Callable[[np.ndarray], tuple[FaceBox | None, QualityReport | None]] | None = None
        self._analyzer_error: BaseException | None = None
        self._analyzer_lock = threading.Lock()
        self._preload: threading.Thread | None = None

    @property
    def spec(self) -> str:
        return self._spec

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def preload(self) -> None:
        """Build the face analyzer on a background thread now, so the first camera start finds it ready.

        dlib loads its 68-landmark model holding the GIL (0.5–1 s): done at start-up, before the user
        starts a camera, that pause happens while the window appears instead of when the camera starts.
        Safe to call more than once; errors are reported when the camera starts.
        """
        if self._preload is not None:
            return
        self._preload = threading.Thread(target=self._ensure_analyzer, name="wplus-faces-preload", daemon=True)
        self._preload.start()

    @property
    def analyzer_ready(self) -> bool:
        """True once the face analyzer was built (by `preload` or a camera start)."""
        return self._analyzer is not None

    def _ensure_analyzer(self) -> Callable[[np.ndarray], tuple[FaceBox | None, QualityReport | None]]:
        """The shared analyzer, built on first use (the lock makes a camera start wait for a preload)."""
        with self._analyzer_lock:
            if self._analyzer is not None:
                return self._analyzer
            if self._analyzer_error is not None:
                raise self._analyzer_error
            t0 = time.perf_counter()
            try:
                self._analyzer = self._analyzer_factory()
            except ImportError as exc:  # dlib is not installed: no use trying again
                self._analyzer_error = exc
                raise
            except Exception:
                if threading.current_thread() is self._preload:
                    log.exception("preloading the face tracker failed (the camera start tries again)")
                raise
            log.info("face tracker ready in %.2f s (%s)", time.perf_counter() - t0, threading.current_thread().name)
            return self._analyzer

    def start(self, spec: str) -> None:
        """Stop the current source (if any) and start `spec` (opened on the camera thread)."""
        self.stop()
        self._spec = spec
        self._stop = threading.Event()
        self._gui_slot = LatestSlot()
        analysis_slot: LatestSlot[tuple[int, np.ndarray]] = LatestSlot()
        stop = self._stop
        cam = threading.Thread(target=self._run_camera, args=(spec, stop, analysis_slot), name="wplus-camera",
                               daemon=True)
        ana = threading.Thread(target=self._run_analysis, args=(analysis_slot,), name="wplus-faces", daemon=True)
        self._threads = [cam, ana]
        cam.start()
        ana.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop both threads and join them."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def probe(self) -> None:
        """List the working cameras on a thread (opening each takes time); `cameras_found` reports."""

        def run() -> None:
            from desktop.camera.sources import probe_cameras

            try:
                self.cameras_found.emit(probe_cameras())
            except Exception as exc:
                log.info("camera probe unavailable: %s", exc)
                self.cameras_found.emit([])

        threading.Thread(target=run, name="wplus-camera-probe", daemon=True).start()

    def take_frame(self) -> tuple[int, np.ndarray] | None:
        """The newest frame for display (None if none arrived since the last call)."""
        return self._gui_slot.take_nowait()

    def latest_frame(self) -> np.ndarray | None:
        """The newest frame seen, for Capture (not consumed by display)."""
        with self._latest_lock:
            return None if self._latest is None else self._latest[1]

    def _run_camera(self, spec: str, stop: threading.Event, analysis_slot: LatestSlot) -> None:
        source: FrameSource | None = None
        try:
            source = self._opener(spec)
            self.state_changed.emit("running")
            index = 0
            misses = 0
            drain = getattr(source, "drain_messages", None)
            while not stop.is_set():
                frame = source.read(timeout=0.5)
                if drain is not None:
                    for m in drain():
                        self.message.emit(m)
                if frame is None:
                    misses += 1
                    if misses == 6:  # ≈3 s: say so once, keep waiting (the source retries itself)
                        self.message.emit("No frames from the camera yet — check that it is connected and free.")
                    continue
                misses = 0
                index += 1
                self.frames = index
                with self._latest_lock:
                    self._latest = (index, frame)
                analysis_slot.put((index, frame))
                if self._gui_slot.put((index, frame)) is None:
                    self.frame_ready.emit()
        except EngineError as exc:
            self.failed.emit(exc)
        except Exception as exc:  # thread top
            log.exception("camera thread failed")
            self.failed.emit(CameraError(f"The camera failed: {exc}", "Choose another camera."))
        finally:
            analysis_slot.close()
            if source is not None:
                try:
                    source.close()
                except Exception:
                    log.exception("closing the camera failed")
            self.state_changed.emit("stopped")

    def _run_analysis(self, slot: LatestSlot) -> None:
        try:
            analyze = self._ensure_analyzer()
            reset = getattr(analyze, "reset", None)
            if reset is not None:
                reset()
        except ImportError as exc:
            log.warning("face tracking unavailable: %s", exc)
            self.analysis_unavailable.emit(f"Face tracking is not available ({exc}). The live view works; capture still encodes the frame.")
            analyze = None
        except Exception as exc:
            log.exception("face tracker failed to start")
            self.analysis_unavailable.emit(f"Face tracking failed to start: {exc}")
            analyze = None
        while True:
            item = slot.take(timeout=0.5)
            if item is CLOSED:
                return
            if item is None or analyze is None:
                continue
            index, frame = item
            t0 = time.perf_counter()
            try:
                box, report = analyze(frame)
            except Exception as exc:
                log.warning("face analysis failed: %s", exc)
                box, report = None, QualityReport(False, (f"Face analysis failed: {exc}",))
            self.analysis_ready.emit(FaceAnalysis(index, box, report, time.perf_counter() - t0,
                                                  (frame.shape[1], frame.shape[0])))
