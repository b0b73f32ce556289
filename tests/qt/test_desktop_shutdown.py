"""Quitting the app mid-render or mid-debounce: every timer stops, then the workers, then the bridge; no
late timer or queued report reaches the closed bridge ("put on a closed Mailbox"), nothing is logged at
ERROR, and the engine session is closed exactly once."""

from __future__ import annotations

import logging
import threading

import numpy as np

from tests.qt.fakes import FakeSession


def _face_image() -> np.ndarray:
    img = np.zeros((480, 640, 3), np.uint8)
    img[100:380, 220:420] = (220, 170, 140)
    return img


def _capture(qtbot, app) -> None:
    app.studio.capture(_face_image(), name="Ada")
    qtbot.waitUntil(lambda: app.studio.identity is not None, timeout=5000)


def _quit(qtbot, app) -> None:
    """What the user's close does in the app: the window closes, the app quits (aboutToQuit → shutdown)."""
    app.window.close()
    app.shutdown()
    qtbot.wait(700)  # past the 350 ms debounce and the throttles: any timer left running fires now


def test_quitting_during_a_debounced_re_render_stops_its_timer(qtbot, make_app, caplog):
    fake = FakeSession(step_delay=0.01)
    app = make_app(fake)
    _capture(qtbot, app)
    qtbot.waitUntil(lambda: not app.studio.busy, timeout=5000)
    app.studio.set_live(True)
    app.studio.generation.update(steps=20)  # live mode: a full re-render is scheduled 350 ms after the change
    assert app.studio._final_timer.is_active()
    renders_before = app.client.render_calls
    caplog.set_level(logging.INFO)
    with qtbot.captureExceptions() as exceptions:
        _quit(qtbot, app)
    assert exceptions == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not app.studio._final_timer.is_active()
    assert app.client.render_calls <= renders_before + 1  # at most the live frame already under way
    assert fake.close_calls == 1


def test_quitting_mid_render_with_a_slider_drag_pending(qtbot, make_app, caplog):
    fake = FakeSession(step_delay=0.02, preview_delay=0.05)
    app = make_app(fake)
    _capture(qtbot, app)
    app.studio.generation.update(steps=200)
    app.studio.generate()
    qtbot.waitUntil(lambda: fake.started.is_set(), timeout=3000)
    qtbot.waitUntil(lambda: app.window.result_view.progress.value() > 0, timeout=3000)
    app.studio.set_live(True)
    slider = app.studio.catalog[0].name
    # a drag: the face preview and the live render are throttled, the final render debounced
    for v in (0.5, 1.0, 1.5):
        app.edits.set_value(slider, v, transient=True)
    assert app.studio._live_throttle._timer.is_active() or app.studio._preview_throttle._timer.is_active()
    caplog.set_level(logging.INFO)
    with qtbot.captureExceptions() as exceptions:
        _quit(qtbot, app)
    assert exceptions == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert fake.renders_cancelled  # the running render was cancelled, not waited for
    assert fake.close_calls == 1
    assert not app.client._worker.is_alive()
    for timer in (app.studio._final_timer, app.studio._live_throttle._timer, app.studio._preview_throttle._timer,
                  app.captures._tick):
        assert not timer.is_active()
    assert not app.window._memory_timer.isActive()
    app.shutdown()  # twice is harmless
    assert fake.close_calls == 1


def test_a_report_queued_before_shutdown_is_dropped_after_it(qtbot, make_app, caplog):
    """An identity encoded just before quitting would ask for a face preview on the closed bridge."""
    fake = FakeSession()
    app = make_app(fake)
    reported = threading.Event()
    encode = fake.encode_identity

    def encode_and_tell(*args, **kwargs):
        try:
            return encode(*args, **kwargs)
        finally:
            reported.set()

    fake.encode_identity = encode_and_tell
    caplog.set_level(logging.INFO)
    with qtbot.captureExceptions() as exceptions:
        app.studio.capture(_face_image(), name="Ada")
        assert reported.wait(5)  # the GUI thread has not run its events since: the report cannot be delivered yet
        _quit(qtbot, app)  # joins the worker, so the report is queued by now; delivered (or not) after shutdown
    assert exceptions == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert app.studio.identity is None  # the late report was dropped, not half-handled
    assert fake.close_calls == 1
