"""The studio on a fake session: generate, progress, history, save/restore, shortcuts, errors, models."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from engine.api import EditState, ModelStatus
from engine.errors import OutOfMemory
from tests.qt.fakes import FakeSession, request_marker


def _face_image() -> np.ndarray:
    img = np.zeros((480, 640, 3), np.uint8)
    img[100:380, 220:420] = (220, 170, 140)
    return img


def _capture(qtbot, app) -> None:
    app.studio.capture(_face_image(), name="Ada")
    qtbot.waitUntil(lambda: app.studio.identity is not None, timeout=5000)


def _shown_marker(app) -> tuple[int, int]:
    img = app.studio.shown.image
    return int(img[0, 0, 0]), int(img[0, 0, 1])


def test_generate_shows_the_image_with_progress_and_history(qtbot, make_app):
    app = make_app(FakeSession(step_delay=0.002))
    _capture(qtbot, app)
    progress: list = []
    app.studio.progress_changed.connect(lambda p: progress.append(p))
    app.studio.generate()
    qtbot.waitUntil(lambda: app.studio.shown is not None, timeout=5000)
    req = app.studio.shown.request
    assert _shown_marker(app) == request_marker(req)
    assert app.window.result_view.image.has_image
    assert len(app.studio.history) == 1
    assert app.window.result_view.strip.count() == 1
    steps = [p.step for p in progress if p is not None]
    assert steps
    assert steps[-1] == req.steps
    qtbot.waitUntil(lambda: app.window.result_view.likeness_label.text().startswith("Likeness"), timeout=3000)
    assert "Last" in app.window.status_timing.text()
    # the worker did all engine calls, never the GUI thread
    assert app.fake.thread_names == {"wplus-inference"}


def test_cancel_stops_a_running_render(qtbot, make_app):
    fake = FakeSession(step_delay=0.02)
    app = make_app(fake)
    app.studio.generation.update(steps=200)
    cancelled: list[int] = []
    app.client.cancelled.connect(cancelled.append)
    gen = app.studio.generate()
    qtbot.waitUntil(lambda: fake.started.is_set(), timeout=3000)
    qtbot.waitUntil(lambda: app.window.result_view.progress.value() > 0, timeout=3000)
    app.studio.cancel()
    qtbot.waitUntil(lambda: gen in cancelled, timeout=3000)
    qtbot.waitUntil(lambda: not app.client.busy, timeout=3000)
    assert len(fake.renders_cancelled) == 1
    assert not fake.renders_finished
    assert app.studio.shown is None
    assert app.window.result_view.progress.value() == 0
    assert not app.window.generation_panel.cancel.isEnabled()


def test_a_stale_result_never_replaces_a_newer_one(qtbot, make_app):
    app = make_app(FakeSession())
    _capture(qtbot, app)
    app.studio.generation.update(seed=7)
    g1 = app.studio.generate()
    qtbot.waitUntil(lambda: app.studio.shown is not None and app.studio.shown.gen == g1, timeout=5000)
    old_result = app.studio.shown.result
    app.studio.generation.update(seed=9)
    g2 = app.studio.generate()
    qtbot.waitUntil(lambda: app.studio.shown.gen == g2, timeout=5000)
    newer = app.studio.shown
    # an older generation delivered late (as a live job that was allowed to finish would be)
    app.client.result_ready.emit(g1, old_result, 0)
    qtbot.waitUntil(lambda: app.studio.stale_dropped == 1, timeout=3000)
    assert app.studio.shown is newer
    assert _shown_marker(app) == (request_marker(newer.request)[0], 9)


def test_shortcuts_generate_cancel_undo_redo_and_save(qtbot, make_app, tmp_path, monkeypatch):
    fake = FakeSession(step_delay=0.01)
    app = make_app(fake)
    w = app.window
    w.activateWindow()
    qtbot.waitUntil(lambda: w.isActiveWindow(), timeout=3000)
    w.result_view.setFocus()
    # Ctrl+Enter generates
    app.studio.generation.update(steps=5)
    qtbot.keyClick(w, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: app.studio.shown is not None, timeout=5000)
    # Esc cancels (a long render)
    app.studio.generation.update(steps=300)
    fake.started.clear()
    qtbot.keyClick(w, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: fake.started.is_set() and fake.renders_started[-1].steps == 300, timeout=3000)
    qtbot.keyClick(w, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: len(fake.renders_cancelled) >= 1, timeout=3000)
    # Ctrl+Z / Ctrl+Shift+Z undo and redo the edit state
    app.edits.set_value("age", 2.0)
    app.edits.set_value("smile", 1.0)
    qtbot.keyClick(w, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert app.edits.state == EditState.from_mapping({"age": 2.0})
    assert w.edit_panel.sliders["smile"].value() == 0.0
    qtbot.keyClick(w, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert app.edits.state == EditState.from_mapping({"age": 2.0, "smile": 1.0})
    assert w.edit_panel.sliders["smile"].value() == 1.0
    # Ctrl+S saves the shown image (the dialog is replaced by a chosen path)
    target = tmp_path / "out.png"
    monkeypatch.setattr("desktop.views.main_window.QFileDialog.getSaveFileName",
                        lambda *a, **k: (str(target), "PNG image (*.png)"))
    with qtbot.waitSignal(app.client.saved, timeout=5000):
        qtbot.keyClick(w, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert target.is_file()
    assert target.stat().st_size > 0
    # menus show the shortcuts
    assert "Ctrl+Return" in w.act_generate.toolTip() or "Ctrl+Enter" in w.act_generate.toolTip()


def test_dropping_a_saved_png_restores_its_settings(qtbot, make_app, tmp_path):
    app = make_app(FakeSession())
    _capture(qtbot, app)
    ident_id = app.studio.identity.identity.id
    app.studio.generation.update(prompt="a knight in armour", seed=1234, steps=17, guidance=5.5, scale=0.8,
                                 start_ratio=35.0)
    app.edits.set_value("age", 1.5)
    app.edits.set_value("glasses", -2.0)
    app.studio.generate()
    qtbot.waitUntil(lambda: bool(app.studio.history), timeout=5000)
    png = tmp_path / "saved.png"
    with qtbot.waitSignal(app.client.saved, timeout=5000):
        app.studio.save_shown(png)
    # change everything, then drop the PNG
    app.studio.generation.update(prompt="something else", seed=1, steps=30, guidance=7.5, scale=1.0, start_ratio=20.0)
    app.edits.reset_all()
    app.studio.select_identity(None)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(png))])
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    app.window.dropEvent(event)
    qtbot.waitUntil(lambda: app.studio.generation.settings.prompt == "a knight in armour", timeout=5000)
    s = app.studio.generation.settings
    assert (s.seed, s.steps, s.guidance, s.scale, s.start_ratio) == (1234, 17, 5.5, 0.8, 35.0)
    assert app.edits.state == EditState.from_mapping({"age": 1.5, "glasses": -2.0})
    assert app.studio.identity.identity.id == ident_id  # the same W+ reselects the saved identity
    gp = app.window.generation_panel
    assert gp.prompt.toPlainText() == "a knight in armour"
    assert gp.seed.value() == 1234
    assert gp.steps.value() == 17
    assert app.window.edit_panel.sliders["glasses"].value() == -2.0


def test_dropping_a_plain_photo_captures_an_identity(qtbot, make_app, tmp_path):
    from desktop.viewmodel.pictures import encode_png

    app = make_app(FakeSession())
    photo = tmp_path / "grace.png"
    photo.write_bytes(encode_png(_face_image()))
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(photo))])
    app.window.dropEvent(QDropEvent(QPoint(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                    Qt.KeyboardModifier.NoModifier))
    qtbot.waitUntil(lambda: app.studio.identity is not None, timeout=5000)
    assert app.studio.identity.identity.name == "grace"
    assert app.window.banner.isHidden()


def test_missing_models_show_the_guidance_and_the_camera_still_works(qtbot, make_app):
    from desktop.camera.sources import SyntheticSource

    fake = FakeSession(missing=("wplus_adapter",))
    app = make_app(fake, source_opener=lambda _spec: SyntheticSource(160, 120, fps=60))
    assert not app.studio.models_ok
    rv = app.window.result_view
    assert rv.stack.currentWidget() is rv.guidance
    text = rv.guidance.body.text()
    assert "wplus_adapter" in text
    assert "wplus models fetch" in text
    assert "Models missing" in app.window.status_state.text()
    # the models dialog lists what is needed and what was found
    app.window.show_models_dialog()
    dlg = app.window._models_dialog
    statuses = [dlg.model.item(r, 1).text() for r in range(dlg.model.rowCount())]
    assert sum("missing" in s for s in statuses) == 1
    assert len(statuses) == 4
    assert "1 required model" in dlg.summary.text()
    dlg.close()
    # camera keeps working
    app.camera.start("synthetic")
    qtbot.waitUntil(lambda: app.window.camera_panel.view.has_image, timeout=5000)
    # generating explains the problem in the banner instead of failing silently; the guidance never
    # covers a render while it runs, and comes back once nothing runs and nothing is shown
    covered: list[bool] = []
    app.studio.busy_changed.connect(lambda busy: busy and covered.append(rv.stack.currentWidget() is rv.guidance))
    app.studio.generate()
    qtbot.waitUntil(lambda: app.window.banner.isVisible(), timeout=5000)
    assert "missing" in app.window.banner.message.text()
    assert covered == [False]
    qtbot.waitUntil(lambda: not app.studio.busy, timeout=5000)
    assert rv.stack.currentWidget() is rv.guidance
    app.camera.stop()


def test_errors_show_the_non_modal_banner_with_details(qtbot, make_app):
    app = make_app(FakeSession(fail_render=OutOfMemory("The GPU ran out of memory.", "Lower the size or steps.")))
    app.studio.generate()
    qtbot.waitUntil(lambda: app.window.banner.isVisible(), timeout=5000)
    assert app.window.banner.message.text().startswith("The GPU ran out of memory.")
    assert app.window.banner.hint.text() == "Lower the size or steps."
    assert "OutOfMemory" in app.window.banner.details.toPlainText()
    assert app.window.isEnabled()  # non-modal: the window stays usable
    app.window.banner.details_button.click()
    assert app.window.banner.details.isVisible()
    app.window.banner.dismiss()
    assert app.window.banner.isHidden()
    log_text = (app.log_dir / "wplus-studio.log").read_text("utf-8")
    assert "The GPU ran out of memory." in log_text


def test_identities_persist_rename_delete_undo_and_mix(qtbot, make_app, tmp_path):
    app = make_app(FakeSession())
    _capture(qtbot, app)
    a = app.studio.identity
    img2 = _face_image()
    img2[:] = img2 // 2
    app.studio.capture(img2, name="Bob")
    qtbot.waitUntil(lambda: app.studio.identity is not None and app.studio.identity.identity.name == "Bob", timeout=5000)
    b = app.studio.identity
    folder = a.folder
    assert (folder / "wplus.npy").is_file()
    assert (folder / "face.png").is_file()
    assert (folder / "thumb.png").is_file()
    np.testing.assert_array_equal(np.load(folder / "wplus.npy"), a.identity.wplus)
    app.library.rename(a.identity.id, "Ada Lovelace")
    assert '"Ada Lovelace"' in (folder / "meta.json").read_text("utf-8")
    app.window._delete(b.identity.id)
    assert app.library.get(b.identity.id) is None
    assert not b.folder.exists()
    assert app.window.identity_panel.undo_button.isEnabled()
    app.window.identity_panel.undo_button.click()
    assert app.library.get(b.identity.id) is not None
    assert b.folder.exists()
    mixed = app.studio.mix(a.identity.id, b.identity.id, 0.25)
    # the engine's one W+ mix: float64 arithmetic, one cast to float32 (as the official edits)
    w64 = 0.75 * a.identity.wplus.astype(np.float64) + 0.25 * b.identity.wplus.astype(np.float64)
    np.testing.assert_array_equal(mixed.identity.wplus, w64.astype(np.float32))
    # a second library instance reads everything back
    from desktop.viewmodel.identities import IdentityLibrary

    again = IdentityLibrary(app.library.root)
    assert again.load() == []
    names = sorted(e.identity.name for e in again.entries())
    assert "Ada Lovelace" in names
    assert "Bob" in names
    assert len(names) == 3


def test_capture_asks_for_consent_once(qtbot, make_app):
    from desktop.camera.sources import SyntheticSource
    from desktop.views.dialogs import LicenceDialog

    app = make_app(FakeSession(), consent=False, source_opener=lambda _s: SyntheticSource(160, 120, fps=60))
    app.camera.start("synthetic")
    qtbot.waitUntil(lambda: app.camera.latest_frame() is not None, timeout=5000)
    app.window.capture()
    dlg = app.window._consent_dialog
    assert isinstance(dlg, LicenceDialog)
    assert dlg.isVisible()
    dlg.agree.setChecked(True)
    dlg.accept()
    qtbot.waitUntil(lambda: app.studio.identity is not None, timeout=5000)
    assert str(app.settings.value("consent/accepted")) == "true"
    app.window._consent_dialog = None
    app.window.capture()  # no second question
    assert app.window._consent_dialog is None
    app.camera.stop()


def test_face_preview_follows_a_dragged_slider_latest_wins(qtbot, make_app):
    fake = FakeSession(preview_delay=0.01)
    app = make_app(fake)
    _capture(qtbot, app)
    qtbot.waitUntil(lambda: app.window.identity_panel.preview_view.has_image, timeout=3000)
    slider = app.window.edit_panel.sliders["age"]
    slider.slider.setSliderDown(True)
    for v in range(1, 31):
        slider.slider.setValue(slider.slider.minimum() + v)
    slider.slider.setSliderDown(False)
    final = app.edits.state
    expected = fake.preview_face(app.studio.identity.identity.wplus, final)
    qtbot.waitUntil(lambda: np.array_equal(app.window.identity_panel.preview_view._image.pixelColor(0, 0).getRgb()[:3],
                                           expected[0, 0]), timeout=5000)
    assert fake.previews < 31 + 2  # coalesced, not one per value


def test_settings_are_remembered_between_runs(qtbot, make_app, tmp_path):
    app = make_app(FakeSession())
    app.studio.generation.update(prompt="remember me", steps=21)
    app.shutdown()
    from desktop.app import AppOptions, StudioApp

    again = StudioApp(AppOptions(settings_path=tmp_path / "settings.ini", log_dir=tmp_path / "logs2",
                                 data_dir=tmp_path / "data", models_dir=tmp_path / "models",
                                 session_factory=lambda _c: FakeSession(), start_engine=False))
    try:
        assert again.generation.settings.prompt == "remember me"
        assert again.window.generation_panel.steps.value() == 21
    finally:
        again.shutdown()
        again.window.close()
        from desktop.logs import remove_logging

        remove_logging(tmp_path / "logs2")


def test_history_click_restores_state_and_ab_compares(qtbot, make_app):
    app = make_app(FakeSession())
    _capture(qtbot, app)
    app.studio.generation.update(seed=11)
    app.studio.generate()
    qtbot.waitUntil(lambda: len(app.studio.history) == 1, timeout=5000)
    app.studio.generation.update(seed=12)
    app.edits.set_value("smile", 2.0)
    app.studio.generate()
    qtbot.waitUntil(lambda: len(app.studio.history) == 2, timeout=5000)
    assert app.window.result_view.ab_button.isEnabled()
    app.window.act_ab.trigger()
    assert app.studio.showing_b
    assert app.window.result_view.ab_button.isChecked()
    app.window.act_ab.trigger()
    assert not app.studio.showing_b
    app.window.result_view.history_clicked.emit(0)
    assert app.studio.generation.settings.seed == 11
    assert app.edits.state == EditState()
    assert app.studio.shown is app.studio.history[0]


@pytest.mark.parametrize("size", [(1440, 900), (1280, 800)])
def test_window_fits_common_screens(qtbot, make_app, size):
    app = make_app(FakeSession())
    app.window.resize(*size)
    qtbot.waitUntil(lambda: app.window.width() <= size[0], timeout=2000)
    for w in (app.window.camera_panel, app.window.generation_panel.generate, app.window.result_view.image):
        assert w.isVisible()
        assert w.width() > 0
        assert w.height() > 0
    assert app.window.width() == size[0]
    assert app.window.height() == size[1]


def test_models_state_enum_roundtrip():
    assert ModelStatus("missing") is ModelStatus.MISSING


def test_a_leaking_qt_binding_is_reported_at_start(qtbot, make_app, monkeypatch):
    from desktop import qtcompat

    monkeypatch.setattr("desktop.app.binding_leaks_references", lambda: True)
    app = make_app(FakeSession(), check_binding=True)
    assert app.window.banner.isVisible()
    assert "reference-counting bug" in app.window.banner.message.text()
    assert "6.11.3" in app.window.banner.hint.text()
    assert qtcompat.binding_leaks_references() is False  # the pinned binding is sound
