"""Face restoration (PSFRGAN, the official `-s` step): the toggle, the capture suggestion, the
aligned | restored comparison and whether restoration helped the likeness.

Self-contained: the main window creates one `RestorePanel` and calls `connect_to(studio, camera)`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from desktop.viewmodel.restoration import (
    RestorationComparison,
    compare_restoration,
    readout_text,
    restore_suggestion,
    restorer_availability,
)
from desktop.views.widgets import ImageView
from engine.api import Identity, QualityReport

COMPARE_TAG = "restore-compare"


class RestorePanel(QWidget):
    """The restoration toggle with its reason, the suggestion, and the aligned | restored faces.

    Signals:
        enabled_changed(bool): the user's choice (only while the file is available).
        compare_requested(object): an identity whose restoration should be compared (run
            `compare_restoration` on the worker, then call `show_comparison`).
    """

    enabled_changed = Signal(bool)
    compare_requested = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("restorePanel")
        self.toggle = QCheckBox("Restore face (PSFRGAN)")
        self.toggle.setToolTip("Restore the aligned face before it is encoded — helps small, soft or "
                               "compressed webcam faces (the official -s option). Applies to Capture and opened "
                               "photos; a Burst is encoded without it")
        self.reason = QLabel("")
        self.reason.setWordWrap(True)
        self.reason.setObjectName("gateHint")
        self.suggestion = QLabel("")
        self.suggestion.setWordWrap(True)
        self.suggestion.setObjectName("gateHint")
        self.aligned_view = ImageView("aligned")
        self.restored_view = ImageView("restored")
        for v, cap in ((self.aligned_view, "aligned"), (self.restored_view, "restored")):
            v.setMinimumSize(96, 96)
            v.setMaximumHeight(128)  # a comparison, not the main view: it must fit a 900-px-high window
            v.set_caption(cap)
        faces = QHBoxLayout()
        faces.addWidget(self.aligned_view)
        faces.addWidget(self.restored_view)
        self.faces = QWidget()
        self.faces.setLayout(faces)
        self.faces.setVisible(False)
        self.readout = QLabel("")
        self.readout.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        for w in (self.toggle, self.reason, self.suggestion, self.faces, self.readout):
            lay.addWidget(w)
        lay.addStretch(1)  # spare height goes below the texts, never between their lines
        for label in (self.suggestion, self.readout):  # an empty label would still take a line
            label.setVisible(False)
        self.available = False
        self._shown_id = ""
        self.set_models(None)
        self.toggle.toggled.connect(self._on_toggled)

    @property
    def restore_on(self) -> bool:
        return self.available and self.toggle.isChecked()

    def set_models(self, states: Any) -> None:
        ok, why = restorer_availability(states)
        self.available = ok
        self.toggle.setEnabled(ok)
        self.toggle.setToolTip(self.toggle.toolTip() if ok else why)
        _set_text(self.reason, why)
        if not ok and self.toggle.isChecked():
            self.toggle.setChecked(False)

    def set_quality(self, quality: QualityReport | None) -> None:
        text = "" if self.restore_on else restore_suggestion(quality)
        _set_text(self.suggestion, text)

    def show_identity(self, identity: Identity | None) -> None:
        restored = None if identity is None else identity.restored_face
        self.faces.setVisible(restored is not None)
        _set_text(self.readout, "")
        if identity is None or restored is None:
            self._shown_id = ""
            return
        self._shown_id = identity.id
        self.aligned_view.set_array(identity.aligned_face)
        self.restored_view.set_array(np.ascontiguousarray(restored))
        _set_text(self.readout, "Comparing the likeness with and without restoration…")
        self.compare_requested.emit(identity)

    def show_comparison(self, comparison: RestorationComparison) -> None:
        if comparison.identity_id == self._shown_id:
            _set_text(self.readout, readout_text(comparison))

    def connect_to(self, studio: Any, camera: Any) -> None:
        """Wire to the studio state (models, identities, capture flag, worker calls) and the camera's analysis."""
        studio.models_changed.connect(self.set_models)
        if studio.model_states is not None:
            self.set_models(studio.model_states)
        camera.analysis_ready.connect(lambda a: self.set_quality(a.quality))
        self.enabled_changed.connect(lambda on: setattr(studio, "restore_faces", on))
        studio.identity_changed.connect(lambda entry: self.show_identity(getattr(entry, "identity", None)))
        self.compare_requested.connect(
            lambda ident: studio.client.call(COMPARE_TAG, lambda session: compare_restoration(session, ident)))
        studio.client.call_done.connect(lambda tag, value: self.show_comparison(value) if tag == COMPARE_TAG else None)

    def _on_toggled(self, on: bool) -> None:
        if on:
            self.suggestion.setVisible(False)
        self.enabled_changed.emit(bool(on and self.available))


def _set_text(label: QLabel, text: str) -> None:
    label.setText(text)
    label.setVisible(bool(text))
