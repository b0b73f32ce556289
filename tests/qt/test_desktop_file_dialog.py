"""Qt's own file dialog (used where no platform theme exists, as in the bundle) shows its toolbar icons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtWidgets import QFileDialog, QToolButton

from desktop.app import load_stylesheet


def _ink(button: QToolButton) -> int:
    """Pixels inside the button's icon area that differ from its background (0: a blank square)."""
    from PySide6.QtGui import QImage

    img = button.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    rgb = np.frombuffer(img.constBits(), np.uint8, count=bpl * h).reshape(h, bpl)[:, : w * 3].reshape(h, w, 3)
    inner = rgb[h // 4: 3 * h // 4, w // 4: 3 * w // 4].astype(int)
    background = rgb[h // 2, 3].astype(int)  # just inside the left border
    return int((np.abs(inner - background).sum(axis=2) > 60).sum())


def test_toolbar_buttons_of_the_file_dialog_show_icons(qtbot, qapp):
    qapp.setStyle("Fusion")
    qapp.setStyleSheet(load_stylesheet())
    try:
        dlg = QFileDialog(None, "Open a photo", str(Path.cwd()))
        dlg.setOption(QFileDialog.Option.DontUseNativeDialog)
        qtbot.addWidget(dlg)
        dlg.resize(700, 400)
        dlg.show()
        qtbot.waitExposed(dlg)
        buttons = {b.objectName(): b for b in dlg.findChildren(QToolButton)}
        for name in ("backButton", "toParentButton", "newFolderButton", "listModeButton", "detailModeButton"):
            assert not buttons[name].icon().isNull(), name
            assert _ink(buttons[name]) > 10, f"{name} is a blank square"
    finally:
        qapp.setStyleSheet("")
