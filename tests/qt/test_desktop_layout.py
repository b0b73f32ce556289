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
    _settle(qtbot, app, size)
    w = app.window
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
