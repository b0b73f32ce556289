"""Dialogs: models and backend, licences and consent."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from desktop.viewmodel.reports import BackendOption
from engine.api import ModelState, ModelStatus

STATUS_TEXT = {
    ModelStatus.OK: "✓ verified",
    ModelStatus.UNVERIFIED: "• present (not verified)",
    ModelStatus.MISSING: "✕ missing",
    ModelStatus.CORRUPT: "✕ corrupt",
}

LICENCE_HTML = """
<h3>Licences</h3>
<p><b>W+ adapter weights and edit directions</b> — S-Lab License 1.0: non-commercial use only
(Copyright 2023 S-Lab). The <b>e4e encoder</b> and <b>StyleGAN2-FFHQ</b> latent space are also
non-commercial (NVIDIA Source Code License-NC; FFHQ). <b>Stable Diffusion 1.5</b> — CreativeML
OpenRAIL-M: read its use restrictions. The <b>PSFRGAN</b> face parser and the optional
<b>PSFRGAN face restoration</b> generator — CC BY-NC-SA 4.0: non-commercial, share-alike.</p>
<p>Images made with the identity features may therefore be used for <b>non-commercial</b> purposes only.</p>
<h3>Consent</h3>
<p>Capturing a person turns their face into a reusable identity. Only capture people who have agreed
to it, and delete their identity when they ask. Identities stay on this computer, in the identities
folder; nothing is sent anywhere.</p>
"""


class ModelsDialog(QDialog):
    """What is needed, what was found, verification state; the folder; backend and device."""

    apply_requested = Signal(str, str, str)  # models folder, backend, device
    verify_requested = Signal()  # hash the model files (the start-up check only looks at them)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.resize(820, 520)
        self.folder = QLineEdit()
        self.folder_reason = QLabel("")
        self.folder_reason.setObjectName("muted")
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._browse)
        self.table = QTableView()
        self.model = QStandardItemModel(0, 4)
        self.model.setHorizontalHeaderLabels(["Model", "Status", "File", "Note"])
        self.table.setModel(self.model)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.backend = QComboBox()
        self.device = QComboBox()
        self.backend_reason = QLabel("")
        self.backend_reason.setObjectName("muted")
        self.backend_reason.setWordWrap(True)
        self.verify_button = verify = QPushButton("Verify files")
        verify.setToolTip("Compare every model file with its published checksum (reads each file once; "
                          "the check at start-up only looks at presence, size and structure).")
        verify.clicked.connect(self._verify)
        self.verify_status = QLabel("")
        self.verify_status.setObjectName("muted")
        self._verifying = False
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Apply | QDialogButtonBox.StandardButton.Close)
        buttons.button(QDialogButtonBox.StandardButton.Apply).clicked.connect(self._apply)
        buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Models folder", row)
        form.addRow("", self.folder_reason)
        be = QHBoxLayout()
        be.addWidget(QLabel("Backend"))
        be.addWidget(self.backend, 1)
        be.addWidget(QLabel("Device"))
        be.addWidget(self.device, 1)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.summary)
        lay.addLayout(be)
        lay.addWidget(self.backend_reason)
        bottom = QHBoxLayout()
        bottom.addWidget(verify)
        bottom.addWidget(self.verify_status, 1)
        bottom.addWidget(buttons)
        lay.addLayout(bottom)
        self.backend.currentIndexChanged.connect(self._explain)
        self.device.currentIndexChanged.connect(self._explain)

    def set_folder(self, folder: str, reason: str = "") -> None:
        self.folder.setText(folder)
        self.folder_reason.setText(reason)

    def _verify(self) -> None:
        self._verifying = True
        self.verify_button.setEnabled(False)
        self.verify_status.setText("Verifying…")
        self.verify_requested.emit()

    def set_progress(self, progress: object) -> None:
        """Show hashing progress (`engine.api.Progress` in bytes), or clear it with None."""
        if progress is None:
            self.verify_button.setEnabled(True)
            return
        step, total = getattr(progress, "step", 0), getattr(progress, "total", 0)
        pct = f" — {100 * step // total} % of {total / 1e9:.2f} GB" if total else ""
        self.verify_status.setText(f"{str(getattr(progress, 'stage', '')).capitalize()}{pct}")

    def set_states(self, states: object) -> None:
        self.model.setRowCount(0)
        if self._verifying:
            self._verifying = False
            self.verify_button.setEnabled(True)
            if isinstance(states, tuple):
                ok = sum(s.status == ModelStatus.OK for s in states)
                bad = sum(s.status == ModelStatus.CORRUPT for s in states)
                self.verify_status.setText(f"Verified: {ok} file(s) match their checksum"
                                           + (f", {bad} corrupt." if bad else "."))
            else:
                self.verify_status.setText("")
        if not isinstance(states, tuple):
            self.summary.setText(f"The models could not be checked: {states}")
            return
        for s in states:
            assert isinstance(s, ModelState)
            cells = [QStandardItem(s.id + ("" if s.required else " (optional)")),
                     QStandardItem(STATUS_TEXT.get(s.status, s.status.value)), QStandardItem(s.path),
                     QStandardItem(s.message or (f"Get it from {s.source_url}" if s.source_url else ""))]
            for c in cells:
                c.setEditable(False)
                if s.licence:
                    c.setToolTip(f"Licence: {s.licence}")
            self.model.appendRow(cells)
        missing = [s for s in states if s.required and s.status in (ModelStatus.MISSING, ModelStatus.CORRUPT)]
        self.summary.setText(
            "All required models are present." if not missing else
            f"{len(missing)} required model(s) missing or corrupt. Run `wplus models fetch` on a machine with "
            "internet, or `wplus models import <folder>` with downloaded files, then choose the folder here.")

    def set_backends(self, options: tuple[BackendOption, ...], backend: str, device: str) -> None:
        for combo, kind, current in ((self.backend, "backend", backend), (self.device, "device", device)):
            combo.blockSignals(True)
            combo.clear()
            model = QStandardItemModel()
            for o in options:
                if o.kind != kind:
                    continue
                item = QStandardItem(o.name if o.available else f"{o.name} — unavailable")
                item.setData(o.name, Qt.ItemDataRole.UserRole)
                item.setData(o.reason, Qt.ItemDataRole.ToolTipRole)
                item.setEnabled(o.available)
                model.appendRow(item)
            combo.setModel(model)
            i = combo.findData(current, Qt.ItemDataRole.UserRole)
            combo.setCurrentIndex(max(0, i))
            combo.blockSignals(False)
        self._options = options
        self._explain()

    def _explain(self, *_a) -> None:
        reasons = [f"{o.name}: {o.reason}" for o in getattr(self, "_options", ())
                   if not o.available and o.reason and o.name != "auto"]
        self.backend_reason.setText("Unavailable — " + "; ".join(reasons) if reasons else "")

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose the models folder", self.folder.text())
        if path:
            self.folder.setText(path)

    def _apply(self) -> None:
        self.apply_requested.emit(self.folder.text().strip(), str(self.backend.currentData() or "auto"),
                                  str(self.device.currentData() or "auto"))


class LicenceDialog(QDialog):
    """Licences and the consent note; with `ask_consent` the user must agree before capturing."""

    def __init__(self, ask_consent: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Licences and consent")
        self.resize(560, 460)
        text = QTextBrowser()
        text.setHtml(LICENCE_HTML)
        text.setOpenExternalLinks(False)
        lay = QVBoxLayout(self)
        lay.addWidget(text, 1)
        self.agree: QCheckBox | None = None
        if ask_consent:
            self.agree = QCheckBox("The person I capture has agreed to it, and I will use the results non-commercially.")
            lay.addWidget(self.agree)
            buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
            ok = buttons.button(QDialogButtonBox.StandardButton.Ok)
            ok.setText("Capture")
            ok.setEnabled(False)
            self.agree.toggled.connect(ok.setEnabled)
        else:
            buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
