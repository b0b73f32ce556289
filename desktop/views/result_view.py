"""The result view: the image (or the denoising preview), progress with ETA, likeness, A/B, history."""

from __future__ import annotations

import html

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.imaging import rgb_to_pixmap
from desktop.viewmodel.models import ModelsReport
from desktop.viewmodel.studio import HistoryEntry
from desktop.views.widgets import ElidedLabel, ImageView
from engine.api import Progress


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.0f} s left"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s left"


class ModelsGuidance(QWidget):
    """Shown in the result area only while generation is impossible and no render or result is there."""

    open_models = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("guidance")
        self.title = QLabel("Some model files are missing")
        self.title.setObjectName("guidanceTitle")
        self.title.setWordWrap(True)
        self.body = QLabel()
        self.body.setWordWrap(True)
        self.body.setTextFormat(Qt.TextFormat.RichText)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.button = QPushButton("Open the Models dialog…")
        self.button.setObjectName("primary")
        self.button.clicked.connect(self.open_models)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(32, 32, 32, 32)
        lay.addStretch(1)
        lay.addWidget(self.title)
        lay.addWidget(self.body)
        lay.addWidget(self.button, 0, Qt.AlignmentFlag.AlignLeft)
        lay.addStretch(2)

    def set_report(self, folder: str, report: ModelsReport) -> None:
        """Say what works now, and what each missing file costs (required ones first)."""
        def where(path: str) -> str:  # relative to the models folder: where to put the file
            return path[len(folder):].lstrip("/\\") if path.startswith(folder) else path

        def items(states) -> str:
            return "".join(f"<li><b>{html.escape(m.id)}</b> ({html.escape(where(m.path))}, {m.status.value}): "
                           f"{html.escape(report.cost(m))}</li>" for m in states)

        self.title.setText("Generation needs more model files" if not report.can_generate
                           else "Some optional model files are missing")
        parts = [f"<p>{html.escape(report.problem)}</p>"] if report.problem else []
        parts.append("<p><b>Works now:</b></p><ul>" + "".join(f"<li>{w}</li>" for w in report.works_now()) + "</ul>")
        if report.missing_required:
            parts.append(f"<p><b>Missing from <code>{html.escape(folder)}</code>:</b></p>"
                         f"<ul>{items(report.missing_required)}</ul>")
        if report.missing_optional:
            parts.append(f"<p><b>Optional, also missing:</b></p><ul>{items(report.missing_optional)}</ul>")
        parts.append("<p>To get them: on a machine with internet, run <code>wplus models fetch</code>, or download the "
                     "files listed in the Models dialog and run <code>wplus models import &lt;folder&gt;</code>. "
                     "Then choose the folder in <b>Models ▸ Models…</b>.</p>")
        self.body.setText("".join(parts))


class ResultView(QWidget):
    """Image area + progress row + history strip."""

    history_clicked = Signal(int)
    save_clicked = Signal()
    save_all_clicked = Signal()
    ab_toggled = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image = ImageView("Capture a face, then press Generate (Ctrl+Enter).")
        self.image.setObjectName("resultImage")
        self.guidance = ModelsGuidance()
        self.stack = QStackedWidget()
        self.stack.addWidget(self.image)
        self.stack.addWidget(self.guidance)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(6)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        # the row's texts give way (cut with "…") rather than widen the window while a render reports
        self.step_label = ElidedLabel("", 0)
        self.step_label.setObjectName("muted")
        self.eta_label = ElidedLabel("", 0)
        self.eta_label.setObjectName("muted")
        self.likeness_label = ElidedLabel("", 0, auto_tooltip=False)
        self.likeness_label.setObjectName("likeness")
        self.likeness_label.setToolTip("Likeness to the identity (face-embedding distance; lower is closer)")
        # the shown result's warnings (e.g. "Rendered on torch: …"): stays with the result, also from the history
        self.warning_label = ElidedLabel("", 0, auto_tooltip=False)  # its tooltip has the warnings
        self.warning_label.setObjectName("resultWarning")
        self.warning_label.setVisible(False)
        self.ab_button = QToolButton()
        self.ab_button.setText("A/B")
        self.ab_button.setCheckable(True)
        self.ab_button.setEnabled(False)
        self.ab_button.setToolTip("Compare with the previous result (Ctrl+B)")
        self.save_button = QPushButton("Save")
        self.save_button.setToolTip("Save as PNG with its settings (Ctrl+S)")
        self.save_button.setEnabled(False)
        self.save_all_button = QPushButton("Save all")
        self.save_all_button.setToolTip("Save every result of the history (Ctrl+Shift+S)")
        self.save_all_button.setEnabled(False)
        # what the render reports, then the buttons: one line each, so neither squeezes the other out in a
        # narrow window
        row = QHBoxLayout()
        row.addWidget(self.step_label)
        row.addSpacing(8)
        row.addWidget(self.eta_label)
        row.addStretch(1)
        row.addWidget(self.warning_label)
        row.addSpacing(8)
        row.addWidget(self.likeness_label)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.ab_button)
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.save_all_button)
        self.strip = QListWidget()
        self.strip.setObjectName("historyStrip")
        self.strip.setViewMode(QListWidget.ViewMode.IconMode)
        self.strip.setFlow(QListWidget.Flow.LeftToRight)
        self.strip.setWrapping(False)
        self.strip.setIconSize(QSize(72, 72))
        self.strip.setFixedHeight(96)
        self.strip.setMovement(QListWidget.Movement.Static)
        self.strip.setHorizontalScrollMode(QListWidget.ScrollMode.ScrollPerPixel)
        self.strip.setToolTip("History: click to restore the full state")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        lay.addWidget(self.stack, 1)
        lay.addWidget(self.progress)
        lay.addLayout(row)
        lay.addLayout(buttons)
        lay.addWidget(self.strip)
        self.strip.itemClicked.connect(lambda it: self.history_clicked.emit(self.strip.row(it)))
        self.save_button.clicked.connect(self.save_clicked)
        self.save_all_button.clicked.connect(self.save_all_clicked)
        self.ab_button.toggled.connect(self.ab_toggled)
        self.shown: HistoryEntry | None = None

    def show_entry(self, entry: HistoryEntry | None) -> None:
        self.shown = entry
        self.image.set_array(None if entry is None else entry.image)
        self.image.set_caption("" if entry is None else
                               f"seed {entry.seed} · {entry.request.steps} steps · {entry.request.identity_name or 'no identity'}")
        self.save_button.setEnabled(entry is not None)
        self.set_warnings(() if entry is None else entry.result.warnings)

    def set_warnings(self, warnings) -> None:
        """A short amber mark under the image; the full text in its tooltip (and in the banner)."""
        warnings = [str(w) for w in warnings]
        if warnings:
            head = warnings[0].split(":", 1)[0] if warnings[0].startswith("Rendered on ") else "Warning"
            more = f" (+{len(warnings) - 1})" if len(warnings) > 1 else ""
            self.warning_label.setText(f"⚠ {head}{more}")
        self.warning_label.setToolTip("\n\n".join(warnings))
        self.warning_label.setVisible(bool(warnings))

    def show_step(self, preview) -> None:
        self.image.set_array(preview)

    def set_progress(self, p: Progress | None) -> None:
        if p is None:
            self.progress.setValue(0)
            self.step_label.setText("")
            self.eta_label.setText("")
            return
        self.progress.setValue(round(p.fraction * 100))
        self.step_label.setText(f"{p.stage} {p.step}/{p.total}")
        self.eta_label.setText(format_eta(p.eta_s))

    def set_likeness(self, value: float | None) -> None:
        self.likeness_label.setText("" if value is None else f"Likeness {value:.3f}")

    def set_history(self, entries: list[HistoryEntry]) -> None:
        while self.strip.count() > len(entries):
            self.strip.takeItem(self.strip.count() - 1)
        for i in range(self.strip.count(), len(entries)):
            e = entries[i]
            item = QListWidgetItem(QIcon(rgb_to_pixmap(e.thumb)), "")
            item.setToolTip(f"#{i + 1} · seed {e.seed} · {e.request.prompt[:60]}")
            self.strip.addItem(item)
        if entries:
            self.strip.scrollToBottom()
        self.save_all_button.setEnabled(bool(entries))

    def show_guidance(self, show: bool) -> None:
        self.stack.setCurrentWidget(self.guidance if show else self.image)
