"""The identity panel: captured face next to its StyleGAN2 (e4e) preview, the library, and mixing."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.imaging import rgb_to_pixmap
from desktop.viewmodel.identities import IdentityEntry, IdentityLibrary
from desktop.views.widgets import ImageView


class IdentityPanel(QWidget):
    """Shows the current identity and the library; emits intents, holds no logic."""

    selected = Signal(str)
    rename_requested = Signal(str, str)
    delete_requested = Signal(str)
    undo_delete_requested = Signal()
    mix_requested = Signal(str, str, float)

    def __init__(self, library: IdentityLibrary, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.library = library
        title = QLabel("IDENTITY")
        title.setObjectName("panelTitle")
        self.name_label = QLabel("No identity yet")
        self.name_label.setObjectName("identityName")
        self.face_view = ImageView("Captured face")
        self.face_view.set_caption("Aligned")
        self.preview_view = ImageView("StyleGAN2 preview")
        self.preview_view.set_caption("e4e reconstruction")
        self.preview_view.setToolTip(
            "The face as the W+ code holds it (StyleGAN2 of the e4e checkpoint): the exact reconstruction "
            "after capture; while a slider moves, a quicker, blurrier draft that follows the edits.")
        for v in (self.face_view, self.preview_view):
            v.setMinimumSize(100, 100)
            v.setMaximumHeight(190)
        faces = QHBoxLayout()
        faces.setSpacing(6)
        faces.addWidget(self.face_view)
        faces.addWidget(self.preview_view)
        # warnings of the encoding (e.g. no face parser: background not whitened), per identity
        self.note = QLabel("")
        self.note.setObjectName("identityNote")
        self.note.setStyleSheet("color: #fbbf24; font-size: 8.5pt;")  # the theme's warning colour (resources/style.qss)
        self.note.setWordWrap(True)
        self.note.hide()

        self.list = QListWidget()
        self.list.setObjectName("identityList")
        self.list.setIconSize(QSize(40, 40))
        self.list.setEditTriggers(QListWidget.EditTrigger.EditKeyPressed | QListWidget.EditTrigger.DoubleClicked)
        self.list.setToolTip("Double-click or F2 to rename; Delete to remove")
        self.rename_button = QToolButton()
        self.rename_button.setText("Rename")
        self.rename_button.setToolTip("Rename (F2)")
        self.delete_button = QToolButton()
        self.delete_button.setText("Delete")
        self.delete_button.setToolTip("Delete (Del) — can be undone")
        self.undo_button = QToolButton()
        self.undo_button.setText("Undo delete")
        self.undo_button.setEnabled(False)
        tools = QHBoxLayout()
        tools.addWidget(self.rename_button)
        tools.addWidget(self.delete_button)
        tools.addWidget(self.undo_button)
        tools.addStretch(1)

        self.mix_a = QComboBox()
        self.mix_b = QComboBox()
        self.mix_slider = QSlider(Qt.Orientation.Horizontal)
        self.mix_slider.setRange(0, 100)
        self.mix_slider.setValue(50)
        self.mix_slider.setToolTip("Mix: 0% is A, 100% is B")
        self.mix_button = QPushButton("Mix")
        self.mix_button.setToolTip("Create an identity between A and B (linear mix of their W+ codes)")
        mix = QGridLayout()
        mix.addWidget(QLabel("Mix"), 0, 0)
        mix.addWidget(self.mix_a, 0, 1)
        mix.addWidget(self.mix_b, 0, 2)
        mix.addWidget(self.mix_slider, 1, 1, 1, 2)
        mix.addWidget(self.mix_button, 1, 0)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.name_label)
        lay.addLayout(head)
        lay.addLayout(faces)
        lay.addWidget(self.note)
        lay.addWidget(self.list, 1)
        lay.addLayout(tools)
        lay.addLayout(mix)

        library.changed.connect(self.refresh)
        library.undo_available.connect(self.undo_button.setEnabled)
        self.list.currentItemChanged.connect(self._on_current)
        self.list.itemChanged.connect(self._on_item_changed)
        self.rename_button.clicked.connect(self._edit_current)
        self.delete_button.clicked.connect(self._delete_current)
        self.undo_button.clicked.connect(self.undo_delete_requested)
        self.mix_button.clicked.connect(self._mix)
        self._current_id = ""
        self.refresh()

    def refresh(self) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        entries = self.library.entries()
        for e in entries:
            item = QListWidgetItem(e.identity.name + ("" if e.folder else "  (unsaved)"))
            item.setData(Qt.ItemDataRole.UserRole, e.identity.id)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
            if e.thumb is not None:
                item.setIcon(QIcon(rgb_to_pixmap(e.thumb)))
            self.list.addItem(item)
            if e.identity.id == self._current_id:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        for combo, default in ((self.mix_a, 0), (self.mix_b, 1)):
            keep = combo.currentData()
            combo.clear()
            for e in entries:
                combo.addItem(e.identity.name, e.identity.id)
            i = combo.findData(keep)
            combo.setCurrentIndex(i if i >= 0 else min(default, combo.count() - 1))
        if self.mix_a.count() >= 2 and self.mix_a.currentIndex() == self.mix_b.currentIndex():
            self.mix_b.setCurrentIndex(1 if self.mix_a.currentIndex() == 0 else 0)
        can_mix = len(entries) >= 2
        for w in (self.mix_button, self.mix_a, self.mix_b, self.mix_slider):
            w.setEnabled(can_mix)
        if not can_mix:
            self.mix_b.setCurrentIndex(-1)  # one identity: nothing to mix it with

    def show_identity(self, entry: IdentityEntry | None) -> None:
        self._current_id = entry.identity.id if entry else ""
        self.name_label.setText(entry.identity.name if entry else "No identity yet")
        self.face_view.set_array(entry.identity.aligned_face if entry else None)
        if entry is None:
            self.preview_view.set_array(None)
        warnings = [str(w) for w in (entry.identity.info.get("warnings", ()) if entry else ())]
        self.note.setText("\n".join(f"⚠ {w}" for w in warnings))
        self.note.setToolTip("How this identity was encoded. Install the missing model and capture again "
                             "for the official recipe." if warnings else "")
        self.note.setVisible(bool(warnings))
        self.refresh()

    def show_preview(self, image) -> None:
        self.preview_view.set_array(image)

    def _on_current(self, item: QListWidgetItem | None, _prev) -> None:
        if item is not None:
            self.selected.emit(str(item.data(Qt.ItemDataRole.UserRole)))

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        self.rename_requested.emit(str(item.data(Qt.ItemDataRole.UserRole)), item.text().replace("  (unsaved)", ""))

    def _edit_current(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self.list.editItem(item)

    def _delete_current(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self.delete_requested.emit(str(item.data(Qt.ItemDataRole.UserRole)))

    def _mix(self) -> None:
        a, b = self.mix_a.currentData(), self.mix_b.currentData()
        if a and b and a != b:
            self.mix_requested.emit(str(a), str(b), self.mix_slider.value() / 100)
