"""Integration of the studio with its engine as a user meets it: which face preview is asked for when,
no hashing at start-up (Verify in the Models dialog instead), the face tracker loaded before the
camera starts, and the encoding's warnings shown with the identity. Fake session at the bridge."""

from __future__ import annotations

import threading

import numpy as np

from desktop.camera.sources import SyntheticSource
from desktop.viewmodel.studio import (
    DRAG_PREVIEW_SIZE,
    EXACT_PREVIEW_SIZE,
    PREVIEW_CAPTIONS,
    SETTLED_PREVIEW_SIZE,
)
from engine.api import EditState, FaceBox, Identity, QualityReport
from tests.qt.fakes import FakeSession


def _face_image() -> np.ndarray:
    img = np.zeros((480, 640, 3), np.uint8)
    img[100:380, 220:420] = (220, 170, 140)
    return img


def _caption(app) -> str:
    return app.window.identity_panel.preview_view._caption


def test_exact_reconstruction_after_capture_draft_while_dragging(qtbot, make_app):
    fake = FakeSession(preview_delay=0.005)
    app = make_app(fake)
    app.studio.capture(_face_image(), name="Ada")
    qtbot.waitUntil(lambda: app.window.identity_panel.preview_view.has_image, timeout=5000)
    # "is this me?": the official reconstruction, not the reduced path
    assert fake.preview_requests == [(EXACT_PREVIEW_SIZE, True)]
    assert _caption(app) == PREVIEW_CAPTIONS["exact"]
    # dragging: the cheap 128² level; the preview follows (its caption says it is a draft)
    for v in (0.5, 1.0, 1.5):
        app.edits.set_value("age", v, transient=True)
        qtbot.wait(40)
    qtbot.waitUntil(lambda: _caption(app) == PREVIEW_CAPTIONS["drag"], timeout=5000)
    assert (DRAG_PREVIEW_SIZE, False) in fake.preview_requests
    assert app.window.identity_panel.preview_view._image.width() == DRAG_PREVIEW_SIZE
    # let go: the reduced 256² level of the final value
    n = len(fake.preview_requests)
    app.edits.commit()
    qtbot.waitUntil(lambda: len(fake.preview_requests) > n and _caption(app) == PREVIEW_CAPTIONS["settled"],
                    timeout=5000)
    assert fake.preview_requests[-1] == (SETTLED_PREVIEW_SIZE, False)
    assert fake.thread_names == {"wplus-inference"}  # the worker did every engine call
    expected = fake.preview_face(app.studio.identity.identity.wplus, app.edits.state, SETTLED_PREVIEW_SIZE)
    got = app.window.identity_panel.preview_view._image.pixelColor(0, 0).getRgb()[:3]
    assert tuple(got) == tuple(expected[0, 0])
    # back to no edits: the reconstruction again, exact
    n = len(fake.preview_requests)
    app.edits.set_state(EditState())
    qtbot.waitUntil(lambda: len(fake.preview_requests) > n and _caption(app) == PREVIEW_CAPTIONS["exact"],
                    timeout=5000)
    assert fake.preview_requests[-1] == (EXACT_PREVIEW_SIZE, True)
    # selecting an identity with edits set: exact, captioned as edited
    app.edits.set_value("age", 2.0)
    other = app.library.add(Identity("", "Bo", np.zeros((1, 18, 512), np.float32)), persist=False)
    n = len(fake.preview_requests)
    app.studio.select_identity(other.identity.id)
    qtbot.waitUntil(lambda: len(fake.preview_requests) > n and _caption(app) == PREVIEW_CAPTIONS["exact_edited"],
                    timeout=5000)
    assert fake.preview_requests[-1] == (EXACT_PREVIEW_SIZE, True)


def test_start_up_does_not_hash_and_verify_does_with_progress(qtbot, make_app):
    fake = FakeSession()
    app = make_app(fake)
    assert fake.model_checks == [False]  # start-up: presence and structure only
    assert app.studio.models_ok  # unverified files are usable
    app.window.show_models_dialog()
    dlg = app.window._models_dialog
    statuses = [dlg.model.item(r, 1).text() for r in range(dlg.model.rowCount())]
    assert statuses == ["• present (not verified)"] * 4
    seen: list = []
    app.client.models_progress.connect(seen.append)
    dlg.verify_button.click()
    assert not dlg.verify_button.isEnabled()
    assert dlg.verify_status.text() == "Verifying…"
    qtbot.waitUntil(lambda: dlg.verify_button.isEnabled(), timeout=5000)
    qtbot.waitUntil(lambda: "Verified" in dlg.verify_status.text(), timeout=5000)
    assert fake.model_checks == [False, True]
    assert dlg.verify_status.text() == "Verified: 4 file(s) match their checksum."
    statuses = [dlg.model.item(r, 1).text() for r in range(dlg.model.rowCount())]
    assert statuses == ["✓ verified"] * 4
    stages = [p.stage for p in seen if p is not None]
    assert any(s.startswith("checking sd15") for s in stages)
    assert seen[-1] is None  # cleared when done
    assert fake.thread_names == {"wplus-inference"}
    dlg.close()


def test_face_tracker_is_built_once_off_the_gui_thread_before_the_camera_starts(qtbot, make_app):
    built: list[str] = []
    gate = threading.Event()

    class Analyzer:
        resets = 0

        def reset(self) -> None:
            Analyzer.resets += 1

        def __call__(self, frame):
            return FaceBox(10, 10, 50, 50), QualityReport(True, ())

    def factory():
        built.append(threading.current_thread().name)
        gate.wait(5)  # a slow model load
        return Analyzer()

    app = make_app(FakeSession(), analyzer_factory=factory, preload_faces=True,
                   source_opener=lambda _spec: SyntheticSource(160, 120, fps=60))
    qtbot.waitUntil(lambda: bool(built), timeout=3000)
    assert built == ["wplus-faces-preload"]  # started at start-up, before any camera
    assert not app.camera.analyzer_ready
    # the camera starts while the load is still running: frames show, analysis waits for the model
    app.camera.start("synthetic")
    qtbot.waitUntil(lambda: app.window.camera_panel.view.has_image, timeout=5000)
    gate.set()
    qtbot.waitUntil(lambda: app.window.camera_panel.view.analysis is not None, timeout=5000)
    assert app.camera.analyzer_ready
    app.camera.stop()
    app.camera.start("synthetic")  # a second start reuses the model
    qtbot.waitUntil(lambda: Analyzer.resets == 2, timeout=5000)
    app.camera.stop()
    assert built == ["wplus-faces-preload"]


def test_encoding_warnings_are_shown_with_the_identity(qtbot, make_app):
    from engine.faces.chain import NO_PARSER_WARNING

    app = make_app(FakeSession())
    note = app.window.identity_panel.note
    warned = app.library.add(Identity("", "No parser", np.zeros((1, 18, 512), np.float32),
                                      info={"warnings": [NO_PARSER_WARNING]}), persist=False)
    clean = app.library.add(Identity("", "Clean", np.ones((1, 18, 512), np.float32)), persist=False)
    app.studio.select_identity(warned.identity.id)
    assert note.isVisible()
    assert "not whitened" in note.text()
    app.studio.select_identity(clean.identity.id)
    assert not note.isVisible()
