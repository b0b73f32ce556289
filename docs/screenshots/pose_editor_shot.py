"""Take docs/screenshots/pose_editor.png: the pose editor in use, in the real app under Xvfb.

The app runs without an engine (no weights are needed to edit a pose). The script does what an artist
does: adds a pose control, puts scikit-image's astronaut photo (NASA, public domain) under it, drags
the joints onto her with real mouse events, hides the joints out of the frame (double-click), and
turns on the face points: the 68 dlib landmarks found in the photo (in the app they come from the
current identity's aligned face), placed on the pose's eyes.

Usage: QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1440x900x24" .venv/bin/python docs/screenshots/pose_editor_shot.py [out.png]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# where the joints go on the photo (normalised x, y), from the photo itself
TARGETS = {
    0: (0.44, 0.25), 1: (0.44, 0.43), 2: (0.19, 0.53), 3: (0.08, 0.80), 4: (0.25, 0.96),
    5: (0.67, 0.53), 6: (0.71, 0.80), 7: (0.56, 0.93),
    14: (0.40, 0.20), 15: (0.48, 0.20), 16: (0.33, 0.22), 17: (0.56, 0.22),
}
HIDDEN = (8, 9, 10, 11, 12, 13)  # hips, knees, ankles: below the frame


def main() -> int:
    import skimage.data
    from PySide6.QtCore import QPoint, Qt  # noqa: TID251 - drives the GUI
    from PySide6.QtTest import QTest  # noqa: TID251 - drives the GUI
    from PySide6.QtWidgets import QApplication  # noqa: TID251 - drives the GUI

    from desktop.app import AppOptions, StudioApp

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots" / "pose_editor.png"
    qapp = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp(prefix="wplus-pose-shot-"))
    app = StudioApp(AppOptions(models_dir=tmp / "models", settings_path=tmp / "settings.ini", log_dir=tmp / "logs",
                               data_dir=tmp / "data", start_engine=False, preload_faces=False), qapp)
    photo = skimage.data.astronaut()

    def pump(seconds: float = 0.05) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            qapp.processEvents()
            time.sleep(0.005)

    panel = app.window.controls_panel
    app.studio.generation.update(width=512, height=512)
    i = panel.add_pose()
    editor = panel.editor
    editor.move(0, 0)
    editor.resize(720, 860)
    panel.show_editor()
    editor.set_photo(photo)
    editor.opacity.set_value(0.7, emit=True)
    pump(0.5)
    canvas = editor.canvas

    def at(x: float, y: float) -> QPoint:
        return canvas.to_widget(x, y).toPoint()

    for k in HIDDEN:
        QTest.mouseDClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                          at(*panel.model.control(i).pose.points[k]))
        pump()
    editor.presets.setCurrentIndex(editor.presets.findData("standing"))
    for k, (x, y) in TARGETS.items():
        x0, y0 = panel.model.control(i).pose.points[k]
        QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(x0, y0))
        for t in (0.2, 0.4, 0.6, 0.8, 1.0):
            QTest.mouseMove(canvas, at(x0 + t * (x - x0), y0 + t * (y - y0)))
            pump(0.01)
        QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(x, y))
        pump()
    panel.model.set_landmarks(panel.model.detect_landmarks(photo))
    editor.set_face_available(True)
    editor.face.setChecked(True)
    QTest.mouseMove(canvas, at(*TARGETS[7]))  # hover the left wrist: its name shows
    pump(0.5)
    g = editor.frameGeometry()
    shot = qapp.primaryScreen().grabWindow(0, g.x(), g.y(), g.width(), g.height())
    raw = tmp / "shot.png"
    ok = shot.save(str(raw), "PNG")
    app.shutdown()
    if not ok:
        print("could not save the screenshot", file=sys.stderr)
        return 1
    from PIL import Image

    with Image.open(raw) as im:  # true colour: a 256-colour palette dulls the OpenPose colours
        im.convert("RGB").save(out, optimize=True)
    print(f"saved {out} ({out.stat().st_size / 1024:.0f} KB, {shot.width()}×{shot.height()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
