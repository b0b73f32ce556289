"""Edit sliders built from the engine's direction catalog, grouped, with reset and undo/redo."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QScrollArea, QToolButton, QVBoxLayout, QWidget

from desktop.viewmodel.edits import EditHistory
from desktop.views.widgets import TAB_PAGE_MARGINS, FloatSlider
from engine.api import EditState, SliderSpec

GROUP_ORDER = ("age & gender", "expression", "pose", "appearance")


class EditPanel(QWidget):
    """One `FloatSlider` per catalog entry; drags are transient, releases are undo steps."""

    def __init__(self, edits: EditHistory, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edits = edits
        self.sliders: dict[str, FloatSlider] = {}
        title = QLabel("EDITS")
        title.setObjectName("panelTitle")
        self.undo_button = QToolButton()
        self.undo_button.setText("↶")
        self.undo_button.setToolTip("Undo edit (Ctrl+Z)")
        self.redo_button = QToolButton()
        self.redo_button.setText("↷")
        self.redo_button.setToolTip("Redo edit (Ctrl+Shift+Z)")
        self.reset_button = QToolButton()
        self.reset_button.setText("Reset all")
        self.reset_button.setToolTip("Reset every slider to 0 (Ctrl+R)")
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.undo_button)
        head.addWidget(self.redo_button)
        head.addWidget(self.reset_button)
        self._body = QWidget()
        self._body.setObjectName("editBody")
        self._body_layout = QVBoxLayout(self._body)
        self._body_layout.setContentsMargins(0, 0, 6, 0)
        self._body_layout.setSpacing(8)
        self.empty = QLabel("Edit sliders appear when the engine's direction catalog is loaded.")
        self.empty.setWordWrap(True)
        self.empty.setObjectName("muted")
        self._body_layout.addWidget(self.empty)
        self._body_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self._body)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(*TAB_PAGE_MARGINS)  # clear of the tab page's frame
        lay.addLayout(head)
        lay.addWidget(scroll, 1)
        self.undo_button.clicked.connect(edits.undo)
        self.redo_button.clicked.connect(edits.redo)
        self.reset_button.clicked.connect(edits.reset_all)
        edits.changed.connect(self._on_state)
        edits.history_changed.connect(self._on_history)
        self._on_history()

    def set_catalog(self, catalog: tuple[SliderSpec, ...]) -> None:
        while self._body_layout.count():
            item = self._body_layout.takeAt(0)
            if item.widget() is not None and item.widget() is not self.empty:
                item.widget().deleteLater()
        self.sliders.clear()
        groups: dict[str, list[SliderSpec]] = {}
        for spec in catalog:
            groups.setdefault(spec.group or "other", []).append(spec)
        order = sorted(groups, key=lambda g: (GROUP_ORDER.index(g.lower()) if g.lower() in GROUP_ORDER else 99,
                                              list(groups).index(g)))
        self.empty.setVisible(not catalog)
        self._body_layout.addWidget(self.empty)
        for name in order:
            title = name[:1].upper() + name[1:]
            box = QGroupBox(title.replace("&", "&&"))  # a single & would become a mnemonic
            box_lay = QVBoxLayout(box)
            box_lay.setSpacing(2)
            for spec in groups[name]:
                s = FloatSlider(spec.label, spec.minimum, spec.maximum, spec.step or 0.1, spec.default,
                                tooltip=spec.tooltip or f"{spec.label} ({spec.kind.value})")
                s.setObjectName(f"slider_{spec.name}")
                s.value_changed.connect(lambda v, dragging, n=spec.name: self.edits.set_value(n, v, transient=dragging))
                s.released.connect(lambda _v: self.edits.commit())
                self.sliders[spec.name] = s
                box_lay.addWidget(s)
            self._body_layout.addWidget(box)
        self._body_layout.addStretch(1)
        self._align_labels()
        self._on_state(self.edits.state, False)

    def _align_labels(self) -> None:
        """One label width for every slider, so the tracks line up (long labels are elided, full in the tooltip)."""
        if not self.sliders:
            return
        metrics = next(iter(self.sliders.values())).label.fontMetrics()
        # the bold (moved) state is wider; leave room for it
        widest = max(metrics.horizontalAdvance(s.label.text()) for s in self.sliders.values())
        width = min(int(widest * 1.08) + 6, 124)
        for s in self.sliders.values():
            full = s.label.text()
            s.label.setFixedWidth(width)
            elided = metrics.elidedText(full, Qt.TextElideMode.ElideRight, width - 4)
            if elided != full:
                s.label.setText(elided)
                s.label.setToolTip(f"{full} — {s.toolTip()}" if s.toolTip() else full)

    def _on_state(self, state: EditState, transient: bool) -> None:
        if transient:
            return
        for name, s in self.sliders.items():
            if abs(s.value() - state.get(name)) > 1e-9:
                s.set_value(state.get(name))

    def _on_history(self) -> None:
        self.undo_button.setEnabled(self.edits.can_undo)
        self.redo_button.setEnabled(self.edits.can_redo)
