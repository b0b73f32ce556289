"""The generation panel: prompt, negative prompt, seed, sampler settings, identity strength, live mode."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.viewmodel.generation import SIZES, GenerationSettings, GenerationState
from desktop.views.widgets import FloatSlider
from engine.api import Scheduler

SCHEDULER_LABELS = {
    Scheduler.EULER.value: "Euler (official)",
    Scheduler.DDIM.value: "DDIM",
    Scheduler.DPMPP_2M_KARRAS.value: "DPM++ 2M Karras",
    Scheduler.EULER_ANCESTRAL.value: "Euler ancestral",
}


class GenerationPanel(QWidget):
    """Edits a `GenerationState`; Generate/Cancel are the main window's actions."""

    generate_clicked = Signal()
    draft_clicked = Signal()
    refine_clicked = Signal()
    cancel_clicked = Signal()

    def __init__(self, state: GenerationState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        title = QLabel("GENERATION")
        title.setObjectName("panelTitle")
        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText("Describe the picture…")
        self.prompt.setFixedHeight(64)
        self.prompt.setTabChangesFocus(True)
        self.negative = QPlainTextEdit()
        self.negative.setPlaceholderText("Negative prompt")
        self.negative.setFixedHeight(54)  # two whole lines
        self.negative.setTabChangesFocus(True)

        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Seed")
        self.seed_lock = QCheckBox("Lock")
        self.seed_lock.setToolTip("Keep the seed between generations; unlocked, each Generate draws a new one")
        self.new_seed = QToolButton()
        self.new_seed.setText("New")
        self.new_seed.setToolTip("Draw a new seed (Ctrl+Shift+N)")
        self.steps = QSpinBox()
        self.steps.setRange(1, 150)
        self.guidance = QDoubleSpinBox()
        self.guidance.setRange(1.0, 20.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setDecimals(1)
        self.scheduler = QComboBox()
        for value, label in SCHEDULER_LABELS.items():
            self.scheduler.addItem(label, value)
        self.size = QComboBox()
        for w, h in SIZES:
            self.size.addItem(f"{w} × {h}", (w, h))
        self.n = QSpinBox()
        self.n.setRange(1, 8)
        self.n.setToolTip("Number of variations (seeds seed, seed+1, …)")
        self.scale = FloatSlider("Identity", 0.0, 2.0, 0.05, 1.0, lambda v: f"{v:.2f}",
                                 "Identity strength: the W+ adapter's residual scale (official 1.0)")
        self.start = FloatSlider("Delay %", 0.0, 100.0, 1.0, 20.0, lambda v: f"{v:.0f}%",
                                 "Delayed subject conditioning: the identity joins after this share of the "
                                 "steps (official 20%; capped at step 30)")
        self.live = QCheckBox("While dragging")
        self.live.setToolTip("Re-render while sliders move (fewer steps), full quality on release (Ctrl+L)")
        self.live_steps = QSpinBox()
        self.live_steps.setRange(1, 50)
        self.live_steps.setToolTip("Steps of live renders")
        self.generate = QPushButton("Generate")
        self.generate.setObjectName("primary")
        self.generate.setToolTip("Generate (Ctrl+Enter)")
        self.draft = QPushButton("Draft")
        self.draft.setToolTip("A quick draft: half size, fewer steps, same seed and identity (Ctrl+D)")
        self.refine = QPushButton("Refine")
        self.refine.setToolTip("Render the shown draft at the full settings")
        self.refine.setEnabled(False)
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Cancel (Esc)")
        self.cancel.setMinimumWidth(self.cancel.fontMetrics().horizontalAdvance("Cancelling…") + 30)
        self.cancel.setEnabled(False)

        seed_row = QHBoxLayout()
        seed_row.setSpacing(6)
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.seed_lock)
        seed_row.addWidget(self.new_seed)
        pair = QHBoxLayout()
        pair.setSpacing(6)
        pair.addWidget(self.steps)
        pair.addWidget(QLabel("CFG"))
        pair.addWidget(self.guidance)
        size_row = QHBoxLayout()
        size_row.setSpacing(6)
        size_row.addWidget(self.size, 1)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.n)
        live_row = QHBoxLayout()
        live_row.setSpacing(6)
        live_row.addWidget(self.live)
        live_row.addSpacing(8)
        live_row.addWidget(QLabel("steps"))
        live_row.addWidget(self.live_steps)
        live_row.addStretch(1)
        form = QFormLayout()
        self.form = form  # more rows (face restoration, LoRAs, …) go here: the buttons stay last
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        form.setHorizontalSpacing(10)
        form.setVerticalSpacing(6)
        form.addRow("Seed", seed_row)
        form.addRow("Steps", pair)
        form.addRow("Sampler", self.scheduler)
        form.addRow("Size", size_row)
        form.addRow("Live", live_row)
        buttons = QHBoxLayout()
        self._buttons = buttons
        buttons.addWidget(self.generate, 2)
        buttons.addWidget(self.draft, 1)
        buttons.addWidget(self.refine, 1)
        buttons.addWidget(self.cancel, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        lay.addWidget(title)
        lay.addWidget(self.prompt)
        lay.addWidget(self.negative)
        lay.addLayout(form)
        lay.addWidget(self.scale)
        lay.addWidget(self.start)
        lay.addLayout(buttons)

        self.show_settings(state.settings)
        self.prompt.textChanged.connect(lambda: state.update(prompt=self.prompt.toPlainText()))
        self.negative.textChanged.connect(lambda: state.update(negative_prompt=self.negative.toPlainText()))
        self.seed.valueChanged.connect(lambda v: state.update(seed=int(v)))
        self.seed_lock.toggled.connect(lambda v: state.update(seed_locked=bool(v)))
        self.new_seed.clicked.connect(state.new_seed)
        self.steps.valueChanged.connect(lambda v: state.update(steps=int(v)))
        self.guidance.valueChanged.connect(lambda v: state.update(guidance=float(v)))
        self.scheduler.currentIndexChanged.connect(lambda _i: state.update(scheduler=str(self.scheduler.currentData())))
        self.size.currentIndexChanged.connect(self._on_size)
        self.n.valueChanged.connect(lambda v: state.update(n=int(v)))
        self.scale.value_changed.connect(lambda v, _d: state.update(scale=v))
        self.start.value_changed.connect(lambda v, _d: state.update(start_ratio=v))
        self.live.toggled.connect(lambda v: state.update(live=bool(v)))
        self.live_steps.valueChanged.connect(lambda v: state.update(live_steps=int(v)))
        self.generate.clicked.connect(self.generate_clicked)
        self.draft.clicked.connect(self.draft_clicked)
        self.refine.clicked.connect(self.refine_clicked)
        self.cancel.clicked.connect(self.cancel_clicked)
        state.changed.connect(self._on_state)

    def _on_size(self, _i: int) -> None:
        w, h = self.size.currentData()
        self.state.update(width=int(w), height=int(h))

    def _on_state(self, s: GenerationSettings, _what: str) -> None:
        self.show_settings(s)  # any change, also from a restore, a draft seed or a script

    def show_settings(self, s: GenerationSettings) -> None:
        """Put `s` into the widgets without echoing changes back."""
        widgets = (self.prompt, self.negative, self.seed, self.seed_lock, self.steps, self.guidance, self.scheduler,
                   self.size, self.n, self.live, self.live_steps, self.scale.slider, self.start.slider)
        for w in widgets:
            w.blockSignals(True)
        if self.prompt.toPlainText() != s.prompt:
            self.prompt.setPlainText(s.prompt)
        if self.negative.toPlainText() != s.negative_prompt:
            self.negative.setPlainText(s.negative_prompt)
        self.seed.setValue(min(s.seed, self.seed.maximum()))
        self.seed_lock.setChecked(s.seed_locked)
        self.steps.setValue(s.steps)
        self.guidance.setValue(s.guidance)
        self.scheduler.setCurrentIndex(max(0, self.scheduler.findData(s.scheduler)))
        i = self.size.findData((s.width, s.height))
        if i < 0:
            self.size.addItem(f"{s.width} × {s.height}", (s.width, s.height))
            i = self.size.count() - 1
        self.size.setCurrentIndex(i)
        self.n.setValue(s.n)
        self.live.setChecked(s.live)
        self.live_steps.setValue(s.live_steps)
        self.scale.set_value(s.scale)
        self.start.set_value(s.start_ratio)
        for w in widgets:
            w.blockSignals(False)

    def set_state(self, *, busy: bool, cancelling: bool, can_refine: bool) -> None:
        """Enable the buttons: all off while a cancel is under way (it ends at the next step)."""
        self.generate.setEnabled(not cancelling)
        self.draft.setEnabled(not cancelling)
        self.refine.setEnabled(can_refine and not cancelling)
        self.cancel.setEnabled(busy and not cancelling)
        self.cancel.setText("Cancelling…" if cancelling else "Cancel")

    def set_draft_first(self, on: bool) -> None:
        """Make Draft the primary button (slow CPU renders); otherwise Generate (official settings) is."""
        first, second = (self.draft, self.generate) if on else (self.generate, self.draft)
        first.setObjectName("primary")
        second.setObjectName("")
        for b in (first, second):
            b.style().unpolish(b)
            b.style().polish(b)
        self._buttons.insertWidget(0, first, 2)
        self._buttons.setStretchFactor(second, 1)
