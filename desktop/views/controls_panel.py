"""The ControlNet and LoRA panel: control images (pose, canny, image), their ControlNets, and LoRAs.

It draws `ControlsModel` and forwards edits to it; the studio adds the model's ControlSpecs and
LoraSpecs to every request. File choosers start in the models folder but take files from anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.viewmodel.controls import ControlsModel, find_model_files
from desktop.views.pose_editor import PoseEditor
from desktop.views.widgets import TAB_PAGE_MARGINS, FloatSlider, ImageView
from engine.api import ControlKind

log = logging.getLogger(__name__)

LANDMARKS_TAG = "controls/landmarks"
SETTINGS_KEY = "controls/state"
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp)"
MODEL_FILTER = "Model files (*.safetensors *.ckpt *.pt *.pth *.bin);;All files (*)"
BROWSE = "__browse__"


def _read_image(path: str) -> np.ndarray:
    from engine.images import load_image

    return load_image(path)


class LoraRow(QWidget):
    """One LoRA: its name, the UNet weight, an optional separate text-encoder weight, remove."""

    def __init__(self, panel: ControlsPanel, index: int) -> None:
        super().__init__()
        self.panel, self.index = panel, index
        entry = panel.model.loras[index]
        self.enabled = QCheckBox(entry.name)
        self.enabled.setToolTip(entry.path)
        self.enabled.setChecked(entry.enabled)
        self.remove = QToolButton()
        self.remove.setText("✕")
        self.remove.setToolTip("Remove this LoRA")
        self.weight = FloatSlider("Weight", -1.0, 2.0, 0.05, 1.0, lambda v: f"{v:.2f}",
                                  "The LoRA's weight on the UNet (A1111's <lora:NAME:WEIGHT>)")
        self.weight.set_value(entry.weight)
        self.separate = QCheckBox("Text")
        self.separate.setToolTip("Give the text encoder its own weight (off: the same as the UNet)")
        self.separate.setChecked(entry.text_weight is not None)
        self.text_weight = FloatSlider("Text", -1.0, 2.0, 0.05, 1.0, lambda v: f"{v:.2f}",
                                       "The LoRA's weight on the text encoder")
        self.text_weight.set_value(entry.weight if entry.text_weight is None else entry.text_weight)
        self.text_weight.setVisible(entry.text_weight is not None)
        for sl in (self.weight, self.text_weight):
            sl.label.setMinimumWidth(58)
        head = QHBoxLayout()
        head.addWidget(self.enabled, 1)
        head.addWidget(self.separate)
        head.addWidget(self.remove)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 2, 0, 2)
        lay.setSpacing(2)
        lay.addLayout(head)
        lay.addWidget(self.weight)
        lay.addWidget(self.text_weight)
        m = panel.model
        self.enabled.toggled.connect(lambda on: m.update_lora(self.index, enabled=bool(on)))
        self.remove.clicked.connect(lambda: m.remove_lora(self.index))
        self.weight.value_changed.connect(lambda v, _d: m.update_lora(self.index, weight=v))
        self.text_weight.value_changed.connect(lambda v, _d: m.update_lora(self.index, text_weight=v))
        self.separate.toggled.connect(self._on_separate)

    def _on_separate(self, on: bool) -> None:
        self.text_weight.setVisible(on)
        self.panel.model.update_lora(self.index, text_weight=self.text_weight.value() if on else None)


class ControlsPanel(QWidget):
    """ControlNets (a list, and the selected one's settings) and LoRAs (a list of weight sliders).

    Args:
        model: the state it draws and edits.
        models_dir: where the ControlNet/LoRA shortlists and file dialogs start (the studio's engine
            folder instead when a studio is given, so a folder chosen in the Models dialog counts).
        studio: when given, the panel follows its identity (face points), results (the pose editor's
            background) and output size, and runs landmark detection on its engine worker.
    """

    def __init__(self, model: ControlsModel, models_dir: Path | None = None, studio: Any = None,
                 settings: QSettings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self._models_dir = models_dir
        self.studio = studio
        self.settings = settings
        self._landmark_face: np.ndarray | None = None
        self._detecting = False
        self.editor = PoseEditor(model, self)
        title = QLabel("CONTROLNET")
        title.setObjectName("panelTitle")
        self.add_pose_button = QToolButton()
        self.add_pose_button.setText("+ Pose")
        self.add_pose_button.setToolTip("A pose drawn with the OpenPose colours, edited in the pose editor")
        self.add_canny_button = QToolButton()
        self.add_canny_button.setText("+ Canny…")
        self.add_canny_button.setToolTip("Canny edges of a photo (computed here with OpenCV)")
        self.add_image_button = QToolButton()
        self.add_image_button.setText("+ Image…")
        self.add_image_button.setToolTip("Use this image as the control image (a pose, depth or edge map made elsewhere)")
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        add_row = QHBoxLayout()
        for b in (self.add_pose_button, self.add_canny_button, self.add_image_button):
            add_row.addWidget(b)
        add_row.addStretch(1)
        self.list = QListWidget()
        self.list.setMaximumHeight(78)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.list.setToolTip("Checked controls apply to the next render, in this order")

        # the selected control's settings
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The ControlNet for this control: from the models folder, or Browse…")
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(14)
        self.scale = FloatSlider("Strength", 0.0, 2.0, 0.05, 1.0, lambda v: f"{v:.2f}",
                                 "controlnet_conditioning_scale: how strongly the control steers")
        self.start = FloatSlider("Start", 0.0, 1.0, 0.01, 0.0, lambda v: f"{v:.0%}",
                                 "The ControlNet starts acting at this share of the steps")
        self.end = FloatSlider("End", 0.0, 1.0, 0.01, 1.0, lambda v: f"{v:.0%}",
                               "The ControlNet stops acting at this share of the steps")
        self.edit_pose = QPushButton("Edit pose…")
        self.low = QSpinBox()
        self.low.setRange(0, 1000)
        self.low.setToolTip("Canny low threshold (ControlNet's annotator: 100)")
        self.high = QSpinBox()
        self.high.setRange(0, 1000)
        self.high.setToolTip("Canny high threshold (ControlNet's annotator: 200)")
        self.remove_button = QToolButton()
        self.remove_button.setText("✕")
        self.remove_button.setToolTip("Remove this control")
        for sl in (self.scale, self.start, self.end):
            sl.label.setMinimumWidth(58)
        self.preview = ImageView("")
        self.preview.setFixedSize(84, 84)
        self.preview.setToolTip("The control image the ControlNet gets")
        kind_row = QHBoxLayout()
        kind_row.addWidget(self.edit_pose)
        self.canny_label = QLabel("Canny")
        kind_row.addWidget(self.canny_label)
        kind_row.addWidget(self.low)
        kind_row.addWidget(self.high)
        kind_row.addStretch(1)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.remove_button)
        sliders = QVBoxLayout()
        sliders.setSpacing(2)
        sliders.addLayout(model_row)
        sliders.addWidget(self.scale)
        sliders.addWidget(self.start)
        sliders.addWidget(self.end)
        sliders.addLayout(kind_row)
        detail_row = QHBoxLayout()
        detail_row.setContentsMargins(0, 0, 0, 0)
        detail_row.addWidget(self.preview, 0, Qt.AlignmentFlag.AlignTop)
        detail_row.addLayout(sliders, 1)
        self.detail = QWidget()
        self.detail.setLayout(detail_row)

        lora_title = QLabel("LORA")
        lora_title.setObjectName("panelTitle")
        self.add_lora_button = QToolButton()
        self.add_lora_button.setText("+ LoRA…")
        self.add_lora_button.setToolTip("Add an SD1.5 LoRA (kohya/A1111/civitai or diffusers layout)")
        lora_head = QHBoxLayout()
        lora_head.addWidget(lora_title)
        lora_head.addStretch(1)
        lora_head.addWidget(self.add_lora_button)
        self.lora_box = QVBoxLayout()
        self.lora_box.setSpacing(4)
        self.lora_rows: list[LoraRow] = []
        self.lora_empty = QLabel("No LoRA.")
        self.lora_empty.setObjectName("hint")

        lay = QVBoxLayout(self)
        lay.setContentsMargins(*TAB_PAGE_MARGINS)  # clear of the tab page's frame
        lay.setSpacing(6)
        lay.addLayout(head)
        lay.addLayout(add_row)
        lay.addWidget(self.list)
        lay.addWidget(self.detail)
        lay.addLayout(lora_head)
        lay.addWidget(self.lora_empty)
        lay.addLayout(self.lora_box)
        lay.addStretch(1)

        self.add_pose_button.clicked.connect(self.add_pose)
        self.add_canny_button.clicked.connect(lambda: self._choose_image(self.add_canny_from, "A photo for canny edges"))
        self.add_image_button.clicked.connect(lambda: self._choose_image(self.add_image_from, "A control image"))
        self.add_lora_button.clicked.connect(self._choose_lora)
        self.list.currentRowChanged.connect(self._on_row)
        self.list.itemChanged.connect(self._on_item_checked)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.scale.value_changed.connect(lambda v, _d: self._update(scale=v))
        self.start.value_changed.connect(lambda v, _d: self._update_range(start=v))
        self.end.value_changed.connect(lambda v, _d: self._update_range(end=v))
        self.low.valueChanged.connect(lambda v: self._update(low=int(v)))
        self.high.valueChanged.connect(lambda v: self._update(high=int(v)))
        self.edit_pose.clicked.connect(self.show_editor)
        self.remove_button.clicked.connect(self._remove)
        self.editor.photo_requested.connect(self._choose_editor_photo)
        model.subscribe(self._on_model)
        if settings is not None:
            self.load_settings(settings)
        if studio is not None:
            self._follow(studio)
        self._rebuild()

    # -- the studio ------------------------------------------------------------------------------
    def _follow(self, studio: Any) -> None:
        studio.controls = self.model
        self.model.subscribe(lambda what: studio.controls_changed() if what != "landmarks" else None)
        studio.identity_changed.connect(self.set_identity)
        studio.result_shown.connect(lambda e: self.editor.set_result(None if e is None else e.image))
        studio.generation.changed.connect(lambda s, _w: self.set_output_size(s.width, s.height))
        studio.client.call_done.connect(self._on_call_done)
        s = studio.generation.settings
        self.set_output_size(s.width, s.height)

    def set_output_size(self, width: int, height: int) -> None:
        self.editor.set_output_size(width, height)
        self._show_preview()

    def set_identity(self, entry: Any) -> None:
        """Follow the current identity: its aligned face is where face points come from."""
        self._landmark_face = None if entry is None else entry.identity.aligned_face
        self._detecting = False
        self.model.set_landmarks(None)
        self.editor.set_face_available(self._landmark_face is not None)
        self._want_landmarks()

    def _want_landmarks(self) -> None:
        """Find the identity's 68 landmarks on the engine worker, only once a pose asks for face points
        (dlib's first load takes a second: nobody should wait for it who does not use it)."""
        face = self._landmark_face
        if (face is None or self.studio is None or self._detecting or self.model.landmarks is not None
                or not any(c.face for c in self.model.controls)):
            return
        self._detecting = True
        model = self.model

        def detect(_session: Any) -> tuple[int, Any]:
            try:
                return id(face), model.detect_landmarks(face)
            except Exception as exc:  # no dlib or no face: face points stay unavailable, said in the tooltip
                return id(face), exc

        self.studio.client.call(LANDMARKS_TAG, detect)

    def _on_call_done(self, tag: str, value: Any) -> None:
        if tag != LANDMARKS_TAG or self._landmark_face is None or value[0] != id(self._landmark_face):
            return
        self._detecting = False
        lm = value[1]
        if lm is None or isinstance(lm, Exception):
            why = "dlib finds no face in the identity's aligned face" if lm is None else str(lm)
            log.info("no face points: %s", why)
            self.editor.set_face_available(False, why)
            lm = None
        self.model.set_landmarks(lm)

    # -- actions (file dialogs call these; tests too) -------------------------------------------
    def add_pose(self) -> int:
        w, h = self.editor.canvas.out_size
        i = self.model.add_pose("standing", self._default_model("openpose"), w / h)
        self.list.setCurrentRow(i)
        return i

    def add_canny_from(self, path: str) -> int:
        i = self.model.add_canny(_read_image(path), path, self._default_model("canny"))
        self.list.setCurrentRow(i)
        return i

    def add_image_from(self, path: str) -> int:
        i = self.model.add_image(_read_image(path), path)  # what it shows is the artist's to say: no guess
        self.list.setCurrentRow(i)
        return i

    def add_lora_from(self, path: str, weight: float = 1.0) -> int:
        return self.model.add_lora(str(Path(path).absolute()), weight)

    def choose_model(self, index: int, path: str) -> None:
        self.model.update_control(index, model=str(Path(path).absolute()))

    def show_editor(self) -> None:
        self.editor.set_index(self.list.currentRow())
        self.editor.show()
        self.editor.raise_()

    @property
    def models_dir(self) -> Path | None:
        if self.studio is not None:
            return Path(self.studio.client.config.models_dir)
        return self._models_dir

    def _default_model(self, word: str) -> str:
        """The first ControlNet of the models folder whose name says what it is for, else none."""
        for p in find_model_files(self.models_dir, "control"):
            if word in p.name.lower():
                return str(p)
        return ""

    def _start_dir(self, key: str) -> str:
        default = str(self.models_dir) if self.models_dir and key != "paths/controls" else str(Path.home())
        return str(self.settings.value(key, default)) if self.settings is not None else default

    def _remember_dir(self, key: str, path: str) -> None:
        if self.settings is not None:
            self.settings.setValue(key, str(Path(path).parent))

    def _choose_image(self, then, caption: str) -> None:
        path, _ = QFileDialog.getOpenFileName(self, caption, self._start_dir("paths/controls"), IMAGE_FILTER)
        if path:
            self._remember_dir("paths/controls", path)
            self._guard(lambda: then(path))

    def _choose_editor_photo(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.editor, "A reference photo", self._start_dir("paths/controls"),
                                              IMAGE_FILTER)
        if path:
            self._remember_dir("paths/controls", path)
            self._guard(lambda: self.editor.set_photo(_read_image(path)))
        else:
            self.editor.set_photo(self.editor.photo)

    def _choose_lora(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Add a LoRA", self._start_dir("paths/loras"), MODEL_FILTER)
        if path:
            self._remember_dir("paths/loras", path)
            self.add_lora_from(path)

    def _on_model_chosen(self, _i: int) -> None:
        row = self.list.currentRow()
        data = self.model_combo.currentData()
        if row < 0:
            return
        if data == BROWSE:
            path, _ = QFileDialog.getOpenFileName(self, "Choose a ControlNet (a file, or a diffusers folder's "
                                                  "model file)", self._start_dir("paths/controlnets"), MODEL_FILTER)
            if path:
                self._remember_dir("paths/controlnets", path)
                p = Path(path)
                # a file inside a diffusers folder means the folder
                self.choose_model(row, str(p.parent if (p.parent / "config.json").is_file() else p))
            else:
                self._show_detail()
        elif data:
            self.choose_model(row, str(data))

    def _guard(self, fn) -> None:
        try:
            fn()
        except Exception as exc:
            if self.studio is not None:
                from desktop.engine_client import FailureInfo

                self.studio.error.emit(FailureInfo.from_exception("controls", exc))
            else:
                raise

    def _update(self, **changes: Any) -> None:
        row = self.list.currentRow()
        if row >= 0:
            self._guard(lambda: self.model.update_control(row, **changes))

    def _update_range(self, **changes: Any) -> None:
        row = self.list.currentRow()
        if row < 0:
            return
        e = self.model.control(row)
        start, end = changes.get("start", e.start), changes.get("end", e.end)
        if start >= end:  # keep start < end by pushing the other handle
            if "start" in changes:
                end = min(1.0, start + 0.01)
                start = end - 0.01
            else:
                start = max(0.0, end - 0.01)
                end = start + 0.01
        self.model.update_control(row, start=round(start, 4), end=round(end, 4))

    def _remove(self) -> None:
        row = self.list.currentRow()
        if row >= 0:
            self.model.remove_control(row)

    def _on_item_checked(self, item: QListWidgetItem) -> None:
        row = self.list.row(item)
        on = item.checkState() == Qt.CheckState.Checked
        if 0 <= row < len(self.model.controls) and self.model.control(row).enabled != on:
            self.model.update_control(row, enabled=on)

    # -- drawing the model ----------------------------------------------------------------------
    def _on_model(self, what: str) -> None:
        if what in ("pose", "landmarks"):
            self._show_preview()
            if what == "landmarks":
                self._want_landmarks()
        elif what == "loras":
            if len(self.lora_rows) != len(self.model.loras):
                self._rebuild_loras()
            else:
                self._sync_loras()
        else:
            self._rebuild()
            self._want_landmarks()

    def _rebuild(self) -> None:
        row = self.list.currentRow()
        self.list.blockSignals(True)
        self.list.clear()
        for i, e in enumerate(self.model.controls):
            item = QListWidgetItem(f"{i + 1}. {e.title}")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if e.enabled else Qt.CheckState.Unchecked)
            item.setToolTip(e.model or "Choose a ControlNet below")
            self.list.addItem(item)
        n = len(self.model.controls)
        self.list.setCurrentRow(min(max(row, 0), n - 1) if n else -1)
        self.list.blockSignals(False)
        self._rebuild_loras()
        self._show_detail()

    def _on_row(self, _row: int) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        row = self.list.currentRow()
        n = len(self.model.controls)
        self.detail.setVisible(0 <= row < n)
        self.list.setVisible(n > 0)
        if not 0 <= row < n:
            self.editor.set_index(-1)
            return
        e = self.model.control(row)
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        if not e.model:
            self.model_combo.addItem("Choose a ControlNet…", "")
        found = [str(p) for p in find_model_files(self.models_dir, "control")]
        for p in ([e.model] if e.model and e.model not in found else []) + found:
            self.model_combo.addItem(Path(p).name, p)
        self.model_combo.addItem("Browse…", BROWSE)
        self.model_combo.setCurrentIndex(max(0, self.model_combo.findData(e.model)))
        self.model_combo.blockSignals(False)
        self.scale.set_value(e.scale)
        self.start.set_value(e.start)
        self.end.set_value(e.end)
        pose = e.kind is ControlKind.OPENPOSE
        canny = e.kind is ControlKind.CANNY and not e.prepared
        self.edit_pose.setVisible(pose)
        for w in (self.canny_label, self.low, self.high):
            w.setVisible(canny)
        for w, v in ((self.low, e.low), (self.high, e.high)):
            w.blockSignals(True)
            w.setValue(v)
            w.blockSignals(False)
        self.editor.set_index(row if pose else -1)
        self._show_preview()

    def _show_preview(self) -> None:
        row = self.list.currentRow()
        if not 0 <= row < len(self.model.controls):
            return
        w, h = self.editor.canvas.out_size
        try:
            self.preview.set_array(self.model.control_image(row, w, h))
        except Exception as exc:  # a control without its image: say so where the image would be
            self.preview.set_array(None)
            self.preview.set_placeholder(str(exc))

    def _rebuild_loras(self) -> None:
        for r in self.lora_rows:
            self.lora_box.removeWidget(r)
            r.hide()  # deleteLater waits for the event loop; the row must leave the screen now
            r.setParent(None)
            r.deleteLater()
        self.lora_rows = [LoraRow(self, i) for i in range(len(self.model.loras))]
        for r in self.lora_rows:
            self.lora_box.addWidget(r)
        self.lora_empty.setVisible(not self.lora_rows)

    def _sync_loras(self) -> None:
        for r, e in zip(self.lora_rows, self.model.loras):
            r.enabled.blockSignals(True)
            r.enabled.setChecked(e.enabled)
            r.enabled.blockSignals(False)
            if not r.weight.slider.isSliderDown():
                r.weight.set_value(e.weight)

    # -- settings -------------------------------------------------------------------------------
    def save_settings(self, settings: QSettings) -> None:
        settings.setValue(SETTINGS_KEY, self.model.to_json())

    def load_settings(self, settings: QSettings) -> None:
        raw = settings.value(SETTINGS_KEY)
        if not raw:
            return
        if self.model.image_loader is None:
            self.model.image_loader = _read_image
        for problem in self.model.load_json(str(raw)):
            log.warning("a saved control was not restored: %s", problem)
