"""The pose editor: the 18 OpenPose keypoints dragged over the current result or a reference photo.

The canvas shows the control image exactly as the ControlNet will get it (`ControlsModel.control_image`,
added over the dimmed background so its black is see-through) and white rings on the joints to grab.
Hidden joints are grey dashed rings where a standing person would have them: drag one to bring it
back; double-click a joint to hide it (its limbs go with it).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from desktop.imaging import rgb_to_qimage
from desktop.viewmodel.controls import ControlsModel
from desktop.views.widgets import FloatSlider
from engine.api import ControlKind
from engine.controls.openpose import KEYPOINTS, PRESET_NAMES, preset

GRAB_PX = 12.0  # how far from a joint a press still grabs it


class PoseCanvas(QWidget):
    """Draws one pose control over a background and turns drags into `ControlsModel` keypoint moves."""

    keypoint_moved = Signal(int)

    def __init__(self, model: ControlsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.index = -1
        self.out_size = (512, 512)
        self.background: np.ndarray | None = None
        self.background_opacity = 0.55
        self._bg_image: QImage | None = None
        self._control: QImage | None = None
        self._drag: int | None = None
        self._hover: int | None = None
        self.setMouseTracking(True)
        self.setMinimumSize(320, 320)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setCursor(Qt.CursorShape.CrossCursor)

    # -- state from outside -----------------------------------------------------------------------
    def set_index(self, index: int) -> None:
        self.index = index
        self.refresh()

    def set_output_size(self, width: int, height: int) -> None:
        if (width, height) != self.out_size:
            self.out_size = (width, height)
            self._bg_image = None
            self.refresh()

    def set_background(self, image: np.ndarray | None) -> None:
        self.background = image
        self._bg_image = None
        self.update()

    def set_background_opacity(self, value: float) -> None:
        self.background_opacity = float(value)
        self.update()

    @property
    def active(self) -> bool:
        return 0 <= self.index < len(self.model.controls) and self.model.control(self.index).kind is ControlKind.OPENPOSE

    def refresh(self) -> None:
        """Draw the control image again from the model (after any change to the pose)."""
        self._control = None
        if self.active:
            w, h = self.out_size
            self._control = rgb_to_qimage(self.model.control_image(self.index, w, h))
        self.update()

    # -- geometry -------------------------------------------------------------------------------
    def image_rect(self) -> QRectF:
        w, h = self.out_size
        s = min((self.width() - 16) / w, (self.height() - 16) / h)
        return QRectF((self.width() - w * s) / 2, (self.height() - h * s) / 2, w * s, h * s)

    def to_widget(self, x: float, y: float) -> QPointF:
        r = self.image_rect()
        return QPointF(r.left() + x * r.width(), r.top() + y * r.height())

    def to_pose(self, p: QPointF) -> tuple[float, float]:
        r = self.image_rect()
        return (p.x() - r.left()) / r.width(), (p.y() - r.top()) / r.height()

    def _handles(self) -> list[tuple[int, tuple[float, float], bool]]:
        """(keypoint, position, visible) for every keypoint; hidden ones where a standing person has them."""
        if not self.active:
            return []
        pose = self.model.control(self.index).pose
        w, h = self.out_size
        ghost = preset("standing", w / h).points
        out = []
        for k in range(len(KEYPOINTS)):
            p = None if pose is None else pose.points[k]
            if p is not None:
                out.append((k, p, True))
            elif ghost[k] is not None:
                out.append((k, ghost[k], False))  # type: ignore[arg-type]
        return out

    def keypoint_at(self, pos: QPointF) -> int | None:
        best, best_d = None, GRAB_PX
        for k, (x, y), visible in self._handles():
            q = self.to_widget(x, y)
            d = ((q.x() - pos.x()) ** 2 + (q.y() - pos.y()) ** 2) ** 0.5 - (0.5 if visible else 0.0)
            if d <= best_d:
                best, best_d = k, d
        return best

    # -- mouse ----------------------------------------------------------------------------------
    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or not self.active:
            return
        k = self.keypoint_at(event.position())
        if k is None:
            return
        self._drag = k
        pose = self.model.control(self.index).pose
        if pose is None or pose.points[k] is None:  # grabbing a hidden joint brings it back where it is
            self.model.toggle_keypoint(self.index, k, self.to_pose(event.position()))
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._drag is not None and self.active:
            x, y = self.to_pose(event.position())
            self.model.move_keypoint(self.index, self._drag, x, y)
            self.keypoint_moved.emit(self._drag)
            return
        k = self.keypoint_at(event.position())
        if k != self._hover:
            self._hover = k
            self.setToolTip("" if k is None else KEYPOINTS[k].replace("_", " "))
            self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._drag = None

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if not self.active:
            return
        k = self.keypoint_at(event.position())
        pose = self.model.control(self.index).pose
        if k is not None and pose is not None and pose.points[k] is not None:
            self.model.toggle_keypoint(self.index, k)
        self._drag = None

    # -- painting -------------------------------------------------------------------------------
    def _background_qimage(self) -> QImage | None:
        if self._bg_image is None and self.background is not None:
            # crop the background to the output's aspect, centred, as the engine crops control images
            img = self.background
            h, w = img.shape[:2]
            ow, oh = self.out_size
            if w * oh > h * ow:
                cw = max(1, round(h * ow / oh))
                img = img[:, (w - cw) // 2:(w - cw) // 2 + cw]
            else:
                ch = max(1, round(w * oh / ow))
                img = img[(h - ch) // 2:(h - ch) // 2 + ch]
            self._bg_image = rgb_to_qimage(img)
        return self._bg_image

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        p.fillRect(self.rect(), QColor("#111317"))
        r = self.image_rect()
        p.fillRect(r, QColor("#000000"))
        bg = self._background_qimage()
        if bg is not None:
            p.setOpacity(self.background_opacity)
            p.drawImage(r, bg)
            p.setOpacity(1.0)
        if self._control is not None:
            p.setCompositionMode(QPainter.CompositionMode.CompositionMode_Plus)  # black adds nothing
            p.drawImage(r, self._control)
            p.setCompositionMode(QPainter.CompositionMode.CompositionMode_SourceOver)
        else:
            p.setPen(QColor("#6b7280"))
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, "Add a pose control to edit it here.")
        for k, (x, y), visible in self._handles():
            c = self.to_widget(x, y)
            hot = k in (self._hover, self._drag)
            if visible:
                p.setPen(QPen(QColor("#ffffff"), 2.5 if hot else 1.5))
            else:
                p.setPen(QPen(QColor("#9ca3af"), 1.2, Qt.PenStyle.DashLine))
            p.setBrush(Qt.BrushStyle.NoBrush)
            rad = 9.0 if hot else 7.0
            p.drawEllipse(c, rad, rad)
            if hot:  # the name of the joint under the mouse (hidden ones too)
                p.setPen(QColor("#e5e7eb") if visible else QColor("#9ca3af"))
                p.drawText(c + QPointF(10, -8), KEYPOINTS[k].replace("_", " "))
        p.end()


class PoseEditor(QWidget):
    """A tool window: the canvas, presets, face points, and the background (result, photo or none)."""

    photo_requested = Signal()  # the panel opens a file dialog and calls `set_photo`

    def __init__(self, model: ControlsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent, Qt.WindowType.Tool)
        self.setWindowTitle("Pose editor — W+ Studio")
        self.setObjectName("poseEditor")
        # its own window, but a child of a card: without its own styled background it would inherit the
        # cards' "transparent" (resources/style.qss) and show whatever is behind it
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.model = model
        self.result: np.ndarray | None = None
        self.photo: np.ndarray | None = None
        self.face_available = False
        self.canvas = PoseCanvas(model)
        self.presets = QComboBox()
        for name in PRESET_NAMES:
            self.presets.addItem(name.capitalize(), name)
        self.apply_preset = QPushButton("Apply preset")
        self.apply_preset.setToolTip("Replace the keypoints with the preset's")
        self.face = QCheckBox("Face points")
        self.face.setToolTip("Add the current identity's 68 face landmarks (dlib), placed on the pose's eyes")
        self.background = QComboBox()
        self.background.addItem("Over the result", "result")
        self.background.addItem("Over a photo…", "photo")
        self.background.addItem("On black", "none")
        self.opacity = FloatSlider("Background", 0.0, 1.0, 0.05, 0.55, lambda v: f"{v:.0%}",
                                   "How strongly the background shows under the skeleton")
        hint = QLabel("Drag a joint. Double-click hides it (its limbs go too); drag a dashed ring to bring it back.")
        hint.setObjectName("hint")
        hint.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(QLabel("Preset"))
        top.addWidget(self.presets)
        top.addWidget(self.apply_preset)
        top.addSpacing(12)
        top.addWidget(self.face)
        top.addStretch(1)
        top.addWidget(self.background)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 10, 10, 10)
        lay.addLayout(top)
        lay.addWidget(self.canvas, 1)
        lay.addWidget(self.opacity)
        lay.addWidget(hint)
        self.resize(640, 760)

        self.apply_preset.clicked.connect(self._on_preset)
        self.face.toggled.connect(self._on_face)
        self.background.currentIndexChanged.connect(self._on_background)
        self.opacity.value_changed.connect(lambda v, _d: self.canvas.set_background_opacity(v))
        model.subscribe(self._on_model)
        self._sync()

    def set_index(self, index: int) -> None:
        self.canvas.set_index(index)
        self._sync()

    def set_output_size(self, width: int, height: int) -> None:
        self.canvas.set_output_size(width, height)

    def set_face_available(self, available: bool, why: str = "") -> None:
        """Whether the current identity can give face points (`why` not, when it cannot)."""
        self.face_available = available
        self.face.setToolTip(
            "Add the current identity's 68 face landmarks (dlib), placed on the pose's eyes" if available
            else f"Face points unavailable: {why or 'capture or select an identity first'}.")
        self._sync()

    def set_result(self, image: np.ndarray | None) -> None:
        self.result = image
        if self.background.currentData() == "result":
            self.canvas.set_background(image)

    def set_photo(self, image: np.ndarray | None) -> None:
        self.photo = image
        self.background.blockSignals(True)
        self.background.setCurrentIndex(self.background.findData("photo" if image is not None else "result"))
        self.background.blockSignals(False)
        self.canvas.set_background(image if image is not None else self.result)

    def _on_preset(self) -> None:
        if self.canvas.active:
            w, h = self.canvas.out_size
            self.model.apply_preset(self.canvas.index, str(self.presets.currentData()), w / h)

    def _on_face(self, on: bool) -> None:
        if self.canvas.active:
            self.model.update_control(self.canvas.index, face=bool(on))

    def _on_background(self, _i: int) -> None:
        which = self.background.currentData()
        if which == "photo":
            if self.photo is None:
                self.photo_requested.emit()
                return
            self.canvas.set_background(self.photo)
        else:
            self.canvas.set_background(self.result if which == "result" else None)

    def showEvent(self, event) -> None:
        self.canvas.refresh()
        super().showEvent(event)

    def _on_model(self, what: str) -> None:
        if not self.isVisible() and what == "pose":
            return
        if self.canvas.index >= len(self.model.controls):
            self.canvas.index = -1
        self.canvas.refresh()
        if what != "pose":
            self._sync()

    def _sync(self) -> None:
        active = self.canvas.active
        for w in (self.presets, self.apply_preset):
            w.setEnabled(active)
        self.face.setEnabled(active and self.face_available)
        self.face.blockSignals(True)
        self.face.setChecked(active and self.model.control(self.canvas.index).face)
        self.face.blockSignals(False)
