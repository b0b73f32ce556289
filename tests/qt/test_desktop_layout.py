"""The window's layout on common screens, by geometry: no text is clipped, no panel overlaps another.

The restore panel's reason (PSFRGAN file missing) wraps to three or four lines; in a 900-px-high window it
used to get one and a half. At 1024×768 and 1280×900 its whole text height must be inside the part of the
label that is visible on screen, or the panel must scroll to it.
"""

from __future__ import annotations

import pytest
from PySide6.QtCore import QRect

from tests.qt.test_psfr_restore_panel import RestoringSession


def _settle(qtbot, app, size: tuple[int, int]) -> None:
    # twice: a panel's minimum width can differ by a pixel or two between the first size and this one
    for _ in range(2):
        app.window.resize(*size)
        qtbot.wait(50)  # the splitters lay out on the next pass
    assert (app.window.width(), app.window.height()) == size


def _in_window(w) -> QRect:
    return QRect(w.mapTo(w.window(), w.rect().topLeft()), w.size())


@pytest.mark.parametrize("size", [(1024, 768), (1280, 900), (1440, 900)])
def test_the_restore_reason_is_never_clipped(qtbot, make_app, size):
    app = make_app(RestoringSession(restorer=False))
    _settle(qtbot, app, size)
    reason = app.window.restore_panel.reason
    assert "psfrgan_epoch15_net_G.pth" in reason.text()
    assert reason.wordWrap()
    full = reason.heightForWidth(reason.width())
    assert full >= 2 * reason.fontMetrics().height()  # the text does wrap at this width
    if reason.visibleRegion().boundingRect().height() < full:  # not all on screen: the panel must scroll to it
        app.window.restore_scroll.ensureWidgetVisible(reason, 0, 0)
        qtbot.wait(20)
    visible = reason.visibleRegion().boundingRect()
    assert reason.height() >= full
    assert visible.height() >= full
    # and the card shows it: the label's rectangle lies inside the scroll area's viewport
    viewport = app.window.restore_scroll.viewport()
    assert _in_window(viewport).contains(QRect(reason.mapTo(reason.window(), visible.topLeft()), visible.size()))


@pytest.mark.parametrize("size", [(1024, 768), (1280, 800), (1440, 900)])
def test_the_window_fits_and_panels_keep_their_parts_apart(qtbot, make_app, size):
    app = make_app(RestoringSession(restorer=False))
    w = app.window
    # long status texts (a fallback warning, the timings of a render) are cut, they never widen the window
    long = "⚠ Rendered on torch: the ONNX Runtime export has no LoRA set 'a:0.8' (python -m export onnx --lora a)."
    app.studio.status_message.emit(long)
    w._on_timings({"total": 12.5, "conditioning_s": 0.17, "denoise_s": 11.8, "decode_s": 0.5})
    _settle(qtbot, app, size)
    assert w.status_state.text() == long
    assert w.status_state.width() >= 200
    if w.status_state.elided_text() != long:
        assert w.status_state.toolTip() == long
    assert w.minimumSizeHint().width() <= size[0]
    assert w.minimumSizeHint().height() <= size[1]
    ip = w.identity_panel
    # the faces, the identity list and the buttons below it are stacked, never drawn over each other
    faces_bottom = max(_in_window(ip.face_view).bottom(), _in_window(ip.preview_view).bottom())
    assert faces_bottom < _in_window(ip.list).top()
    assert _in_window(ip.list).bottom() < _in_window(ip.rename_button).top()
    for widget in (ip, w.camera_panel, w.restore_panel, w.generation_panel, w.result_view):
        assert widget.height() >= widget.minimumSizeHint().height(), type(widget).__name__
    gp = w.generation_panel
    assert gp.generate.isVisible()
    assert gp.cancel.width() >= gp.cancel.minimumSizeHint().width()


@pytest.mark.parametrize("size", [(1024, 768), (1280, 900)])
def test_the_restored_faces_and_the_verdict_get_room_or_scroll(qtbot, make_app, size):
    import numpy as np

    app = make_app(RestoringSession(restorer=True))
    w = app.window
    _settle(qtbot, app, size)
    panel = w.restore_panel
    panel.toggle.setChecked(True)
    img = np.zeros((480, 640, 3), np.uint8)
    img[100:380, 220:420] = (220, 170, 140)
    app.studio.capture(img, name="Ada")
    qtbot.waitUntil(lambda: "restored vs" in panel.readout.text(), timeout=5000)
    qtbot.wait(50)
    ip = w.identity_panel
    assert ip.height() >= ip.minimumSizeHint().height()  # the room came from spare space only
    assert w.minimumSizeHint().height() <= size[1]  # the faces never make the window taller than the screen
    assert w.minimumSizeHint().width() <= size[0]
    scroll = w.restore_scroll
    if size[1] >= 900:  # a 900-px window shows the faces and the verdict at once
        assert scroll.verticalScrollBar().maximum() == 0
        for part in (panel.faces, panel.readout):
            assert part.visibleRegion().boundingRect().height() == part.height(), type(part).__name__
        assert panel.aligned_view.height() >= 96
    # at any size the panel scrolls to the end of the verdict
    scroll.ensureWidgetVisible(panel.readout, 0, 0)
    qtbot.wait(20)
    assert panel.readout.visibleRegion().boundingRect().height() == panel.readout.height()
    bottom = panel.faces.mapTo(panel, panel.faces.rect().bottomLeft()).y()
    assert scroll.verticalScrollBar().maximum() + scroll.viewport().height() >= bottom


def test_a_render_s_reports_never_widen_a_1024_px_window(qtbot, make_app):
    from engine.api import Progress

    app = make_app(RestoringSession(restorer=False))
    w = app.window
    _settle(qtbot, app, (1024, 768))
    rv = w.result_view
    rv.set_progress(Progress("denoise", 27, 150, 61.0, None))
    rv.set_likeness(0.4321)
    rv.set_warnings(["Rendered on torch: the ONNX Runtime export has no FreeU variant.", "A second warning."])
    w._on_timings({"total": 123.45, "conditioning_s": 1.25, "denoise_s": 120.0, "decode_s": 2.2})
    app.studio.status_message.emit("Cancelled after step 27 of 150 (61.0 s). The previous result is still shown.")
    qtbot.wait(50)
    assert w.minimumSizeHint().width() <= 1024
    assert w.width() == 1024
    for label in (rv.step_label, rv.eta_label, rv.likeness_label, rv.warning_label):
        assert label.isVisible()
        if label.elided_text() != label.text():  # cut to fit: the whole text is a hover away
            assert label.toolTip()
