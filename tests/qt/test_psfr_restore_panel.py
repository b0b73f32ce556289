"""The face-restoration panel on a fake session: toggle and its reason, capture flag, suggestion,
aligned | restored faces and the likeness verdict."""

from __future__ import annotations

from typing import Any

import numpy as np

from desktop.camera.controller import FaceAnalysis
from desktop.viewmodel.restoration import (
    RestorationComparison,
    readout_text,
    restore_suggestion,
    restorer_availability,
)
from engine.api import Identity, ModelState, ModelStatus, QualityReport
from tests.qt.fakes import FakeSession


class RestoringSession(FakeSession):
    """FakeSession with the optional PSFRGAN entry; a restored capture carries an inverted face."""

    def __init__(self, *, restorer: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self.restorer = restorer
        self.restore_flags: list[bool] = []

    def model_states(self, **kw: Any) -> tuple[ModelState, ...]:
        status = ModelStatus.UNVERIFIED if self.restorer else ModelStatus.MISSING
        return (*super().model_states(**kw),
                ModelState("psfrgan", "restorer", "psfrgan_epoch15_net_G.pth", False, status))

    def encode_identity(self, image: np.ndarray, *, restore: bool = False, **kw: Any) -> Identity:
        self.restore_flags.append(restore)
        ident = super().encode_identity(image, **kw)
        if not restore:
            return ident
        return Identity(ident.id, ident.name, ident.wplus + 0.5, ident.aligned_face, ident.source,
                        {"restored": True}, restored_face=255 - ident.aligned_face)


def _face_image() -> np.ndarray:
    img = np.zeros((480, 640, 3), np.uint8)
    img[100:380, 220:420] = (220, 170, 140)
    return img


def test_toggle_is_disabled_with_the_reason_without_the_file(qtbot, make_app):
    app = make_app(RestoringSession(restorer=False))
    panel = app.window.restore_panel
    assert not panel.toggle.isEnabled()
    assert "psfrgan_epoch15_net_G.pth" in panel.reason.text()
    assert "not in the models folder" in panel.reason.text()
    assert not panel.reason.isHidden()
    app.studio.capture(_face_image(), name="Ada")
    qtbot.waitUntil(lambda: app.studio.identity is not None, timeout=5000)
    assert app.fake.restore_flags == [False]
    assert panel.faces.isHidden()


def test_restored_capture_shows_both_faces_and_the_verdict(qtbot, make_app):
    app = make_app(RestoringSession(restorer=True))
    panel = app.window.restore_panel
    assert panel.toggle.isEnabled()
    assert panel.reason.isHidden()
    panel.toggle.setChecked(True)
    assert app.studio.restore_faces is True
    app.studio.capture(_face_image(), name="Ada")
    qtbot.waitUntil(lambda: app.studio.identity is not None, timeout=5000)
    ident = app.studio.identity.identity
    assert ident.restored_face is not None  # the library kept it
    assert not panel.faces.isHidden()
    assert panel.aligned_view.has_image
    assert panel.restored_view.has_image
    qtbot.waitUntil(lambda: "restored vs" in panel.readout.text(), timeout=5000)
    # the fake's likeness is the mean-brightness difference of the two images: recompute the verdict
    fake = app.fake
    face = ident.aligned_face
    plain = fake.likeness(face, fake.preview_face(fake.encode_identity(face, aligned=True).wplus, exact=True))
    restored = fake.likeness(face, fake.preview_face(ident.wplus, exact=True))
    assert plain != restored
    expected = "restoration helped" if restored < plain else "restoration did not help"
    assert expected in panel.readout.text()
    assert fake.restore_flags[:2] == [True, False]  # the capture restored; the comparison encoded without
    # toggled off again: the next capture is plain and the comparison disappears
    panel.toggle.setChecked(False)
    app.studio.capture(_face_image(), name="Bob")
    qtbot.waitUntil(lambda: app.studio.identity.identity.name == "Bob", timeout=5000)
    assert fake.restore_flags[-1] is False
    assert panel.faces.isHidden()
    assert panel.readout.text() == ""


def test_suggestion_follows_the_camera_analysis(qtbot, make_app):
    app = make_app(RestoringSession(restorer=True))
    panel = app.window.restore_panel

    def analyse(width: float, sharpness: float) -> None:
        report = QualityReport(ok=True, metrics={"quad_width": width, "sharpness": sharpness})
        app.camera.analysis_ready.emit(FaceAnalysis(1, None, report))

    analyse(220, 150)
    assert "small (220 px)" in panel.suggestion.text()
    assert not panel.suggestion.isHidden()
    analyse(400, 30)
    assert "blurry (sharpness 30)" in panel.suggestion.text()
    analyse(400, 150)
    assert panel.suggestion.isHidden()
    panel.toggle.setChecked(True)
    analyse(220, 30)
    assert panel.suggestion.isHidden()  # already on: nothing to suggest


def test_rules_without_qt():
    assert restorer_availability(None)[0] is False
    ok, why = restorer_availability((ModelState("psfrgan", "restorer", "p", False, ModelStatus.CORRUPT),))
    assert not ok
    assert "damaged" in why
    # the engine restores only with the parser's map: without the parser the toggle is off, and says why
    restorer = ModelState("psfrgan", "restorer", "p", False, ModelStatus.UNVERIFIED)
    for parser in ((), (ModelState("parsenet", "parser", "q", False, ModelStatus.MISSING),)):
        ok, why = restorer_availability((restorer, *parser))
        assert not ok
        assert "parse_multi_iter_90000.pth" in why
        assert "is not installed" in why
    parser_ok = ModelState("parsenet", "parser", "q", False, ModelStatus.OK)
    assert restorer_availability((restorer, parser_ok)) == (True, "")
    assert restore_suggestion(None) == ""
    assert restore_suggestion(QualityReport(ok=True, metrics={"quad_width": 500.0, "sharpness": 200.0})) == ""
    assert "small" in restore_suggestion(QualityReport(ok=False, metrics={"quad_width": 170.0, "sharpness": 200.0}))
    assert "did not help" in readout_text(RestorationComparison("a", 0.30, 0.35))
    assert "restoration helped" in readout_text(RestorationComparison("a", 0.40, 0.35))
    assert "unavailable: no dlib" in readout_text(RestorationComparison("a", None, None, "no dlib"))
