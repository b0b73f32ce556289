"""The camera panel: live view with the face box, landmarks and capture hints; picker; capture buttons."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Signal
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QToolButton, QVBoxLayout, QWidget

from desktop.camera.controller import CameraController, FaceAnalysis
from desktop.camera.sources import SourceChoice
from desktop.imaging import rgb_to_qimage
from desktop.views.widgets import ImageView


class CameraView(ImageView):
    """Live frames with the latest face analysis drawn on top."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Camera off.\nChoose a camera above, open a photo (Ctrl+O) or drop one here.", parent)
        self.analysis: FaceAnalysis | None = None
        self.frame_size = (0, 0)

    def set_frame(self, frame: np.ndarray) -> None:
        self.frame_size = (frame.shape[1], frame.shape[0])
        self.set_qimage(rgb_to_qimage(frame))

    def set_analysis(self, analysis: FaceAnalysis | None) -> None:
        self.analysis = analysis
        self.update()

    def paint_overlay(self, p: QPainter) -> None:
        a = self.analysis
        if a is None or a.box is None or not self.frame_size[0]:
            return
        r = self.image_rect()
        sx, sy = r.width() / self.frame_size[0], r.height() / self.frame_size[1]
        ok = a.quality is not None and a.quality.ok
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(QPen(QColor("#34d399" if ok else "#fbbf24"), 2))
        b = a.box
        p.drawRoundedRect(QRectF(r.x() + b.left * sx, r.y() + b.top * sy, (b.right - b.left) * sx,
                                 (b.bottom - b.top) * sy), 6, 6)
        if b.landmarks is not None:
            p.setPen(QPen(QColor(255, 255, 255, 190), 2))
            for x, y in np.asarray(b.landmarks).reshape(-1, 2):
                p.drawPoint(QPointF(r.x() + x * sx, r.y() + y * sy))


class SourcePicker(QComboBox):
    """A combo box that asks for a camera probe the first time it opens (probing wakes cameras)."""

    about_to_show = Signal()

    def showPopup(self) -> None:
        self.about_to_show.emit()
        super().showPopup()


class CameraPanel(QWidget):
    """Picker, live view, gate hints and the capture actions (wired by the main window)."""

    source_chosen = Signal(str)
    stop_requested = Signal()

    def __init__(self, camera: CameraController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.camera = camera
        self.setObjectName("cameraPanel")
        title = QLabel("CAMERA")
        title.setObjectName("panelTitle")
        self.picker = SourcePicker()
        self.picker.setToolTip("Camera source")
        self.picker.setMinimumWidth(140)
        self.picker.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.toggle = QToolButton()
        self.toggle.setText("Start")
        self.toggle.setCheckable(True)
        self.toggle.setToolTip("Start or stop the live view")
        self.view = CameraView()
        self.view.setMinimumHeight(150)  # a 768-px-high screen fits the whole left column
        self.hint = QLabel("")
        self.hint.setObjectName("gateHint")
        self.hint.setWordWrap(True)
        self.capture_button = QPushButton("Capture")
        self.capture_button.setObjectName("primary")
        self.burst_button = QPushButton("Burst")
        self.open_button = QPushButton("Open photo…")
        head = QHBoxLayout()
        head.addWidget(title)
        head.addSpacing(8)
        head.addWidget(self.picker, 1)
        head.addWidget(self.toggle)
        buttons = QHBoxLayout()
        buttons.addWidget(self.capture_button, 1)
        buttons.addWidget(self.burst_button)
        buttons.addWidget(self.open_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        lay.addLayout(head)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.hint)
        lay.addLayout(buttons)
        self.toggle.toggled.connect(self._on_toggle)
        camera.frame_ready.connect(self._on_frame)
        camera.analysis_ready.connect(self._on_analysis)
        camera.analysis_unavailable.connect(self._set_hint_unavailable)
        camera.state_changed.connect(self._on_state)
        camera.message.connect(self._set_hint_unavailable)
        camera.cameras_found.connect(self._on_cameras)
        self._probed = False
        self.picker.about_to_show.connect(self._probe_once)

    def set_sources(self, sources: list[SourceChoice], current: str = "") -> None:
        self.picker.blockSignals(True)
        self.picker.clear()
        for s in sources:
            self.picker.addItem(s.label, s.spec)
        i = self.picker.findData(current)
        if i >= 0:
            self.picker.setCurrentIndex(i)
        self.picker.blockSignals(False)
        self.picker.currentIndexChanged.connect(self._on_pick)

    def _probe_once(self) -> None:
        if not self._probed:
            self._probed = True
            self.camera.probe()

    def _on_cameras(self, cameras: list) -> None:
        from desktop.camera.sources import list_sources

        current = self.current_spec()
        self.picker.currentIndexChanged.disconnect(self._on_pick)
        self.set_sources(list_sources(cameras if cameras else None), current)

    def current_spec(self) -> str:
        return str(self.picker.currentData() or "")

    def _on_pick(self, _i: int) -> None:
        if self.toggle.isChecked():
            self.source_chosen.emit(self.current_spec())

    def _on_toggle(self, on: bool) -> None:
        if on:
            self.source_chosen.emit(self.current_spec())
        else:
            self.stop_requested.emit()

    def _on_state(self, state: str) -> None:
        running = state == "running"
        self.toggle.blockSignals(True)
        self.toggle.setChecked(running)
        self.toggle.setText("Stop" if running else "Start")
        self.toggle.blockSignals(False)
        if not running:
            self.view.set_analysis(None)

    def _on_frame(self) -> None:
        item = self.camera.take_frame()
        if item is not None:
            self.view.set_frame(item[1])

    def _on_analysis(self, a: FaceAnalysis) -> None:
        self.view.set_analysis(a)
        if a.quality is None:
            self.hint.setText("")
        elif a.quality.ok:
            self.hint.setText("✓ Ready to capture — press Space")
            self.hint.setProperty("state", "ok")
        else:
            self.hint.setText(" · ".join(a.quality.reasons) or "Adjust the framing.")
            self.hint.setProperty("state", "warn")
        self.hint.style().unpolish(self.hint)
        self.hint.style().polish(self.hint)

    def _set_hint_unavailable(self, message: str) -> None:
        self.hint.setText(message)
        self.hint.setProperty("state", "warn")
        self.hint.style().unpolish(self.hint)
        self.hint.style().polish(self.hint)

    def show_still(self, image: np.ndarray) -> None:
        """Show an opened photo in the view (when the camera is off)."""
        if not self.camera.running:
            self.view.set_analysis(None)
            self.view.set_frame(image)
