"""The pose editor: dragging joints changes the control image where they go; presets; hide/show; face points."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, Qt

from engine.controls.openpose import COLORS, FACE_COLOR, LIMBS, limb_color, preset, render
from tests.qt.fakes import FakeSession


def _open_editor(qtbot, app, size=(512, 640)):
    app.studio.generation.update(width=size[0], height=size[1])
    panel = app.window.controls_panel
    i = panel.add_pose()
    panel.choose_model(i, "/models/control_v11p_sd15_openpose.safetensors")
    panel.show_editor()
    editor = panel.editor
    editor.resize(600, 720)
    qtbot.waitExposed(editor)
    return panel, editor, i


def _at(canvas, x: float, y: float) -> QPoint:
    return canvas.to_widget(x, y).toPoint()


def _pixel(qimage, x: int, y: int) -> tuple[int, int, int]:
    c = qimage.pixelColor(x, y)
    return c.red(), c.green(), c.blue()


def test_dragging_a_joint_moves_it_in_the_control_image(qtbot, make_app):
    app = make_app(FakeSession())
    panel, editor, i = _open_editor(qtbot, app)
    canvas = editor.canvas
    assert canvas.out_size == (512, 640)
    wrist = preset("standing", 512 / 640).points[7]  # left wrist, in a person proportioned for 512×640
    old = (int(wrist[0] * 512), int(wrist[1] * 640))
    assert _pixel(canvas._control, *old) == COLORS[7]
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=_at(canvas, *wrist))
    for t in (0.25, 0.5, 0.75, 1.0):  # a drag in steps, towards (0.85, 0.30)
        qtbot.mouseMove(canvas, pos=_at(canvas, wrist[0] + t * (0.85 - wrist[0]), wrist[1] + t * (0.30 - wrist[1])))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=_at(canvas, 0.85, 0.30))
    x, y = panel.model.control(i).pose.points[7]
    assert abs(x - 0.85) < 0.01
    assert abs(y - 0.30) < 0.01
    new = (int(x * 512), int(y * 640))
    image = panel.model.control_image(i, 512, 640)
    assert tuple(image[new[1], new[0]]) == COLORS[7]
    assert tuple(image[old[1], old[0]]) == (0, 0, 0)
    # the forearm (elbow → wrist, limb 5) now runs to the new place: its midpoint carries the limb colour
    elbow = preset("standing", 512 / 640).points[6]
    mid = (int((elbow[0] + x) / 2 * 512), int((elbow[1] + y) / 2 * 640))
    assert tuple(image[mid[1], mid[0]]) == limb_color(5)
    # the canvas shows that same image, and the panel's preview follows
    assert _pixel(canvas._control, *new) == COLORS[7]
    assert panel.preview.has_image
    # the next request carries the dragged pose
    assert np.array_equal(app.studio.current_request().controls[0].image, image)
    # the canvas on screen: the joint's colour is where the widget drew it (over a black background)
    editor.background.setCurrentIndex(editor.background.findData("none"))
    shot = canvas.grab().toImage()
    r, g, b = _pixel(shot, *_at(canvas, x, y).toTuple())
    assert (r, g, b) != (0, 0, 0)
    assert abs(r - COLORS[7][0]) < 40
    assert abs(g - COLORS[7][1]) < 40
    assert abs(b - COLORS[7][2]) < 40


def test_presets_replace_the_keypoints(qtbot, make_app):
    app = make_app(FakeSession())
    panel, editor, i = _open_editor(qtbot, app, (512, 512))
    editor.presets.setCurrentIndex(editor.presets.findData("hands up"))
    editor.apply_preset.click()
    assert panel.model.control(i).pose == preset("hands up")
    assert np.array_equal(panel.model.control_image(i, 512, 512), render(preset("hands up"), 512, 512))
    editor.presets.setCurrentIndex(editor.presets.findData("portrait"))
    editor.apply_preset.click()
    assert panel.model.control(i).pose == preset("portrait")


def test_double_click_hides_a_joint_and_dragging_its_ring_brings_it_back(qtbot, make_app):
    app = make_app(FakeSession())
    panel, editor, i = _open_editor(qtbot, app, (512, 512))
    canvas = editor.canvas
    knee = preset("standing").points[9]  # right knee: limbs 7 (hip→knee) and 8 (knee→ankle)
    qtbot.mouseDClick(canvas, Qt.MouseButton.LeftButton, pos=_at(canvas, *knee))
    assert panel.model.control(i).pose.points[9] is None
    colours = {tuple(c) for c in np.unique(panel.model.control_image(i, 512, 512).reshape(-1, 3), axis=0)}
    assert LIMBS[7] == (8, 9)
    assert limb_color(7) not in colours
    assert limb_color(8) not in colours
    assert COLORS[9] not in colours
    # the hidden knee is a dashed ring where a standing person has it: grab it and drop it elsewhere
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=_at(canvas, *knee))
    qtbot.mouseMove(canvas, pos=_at(canvas, 0.30, 0.70))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=_at(canvas, 0.30, 0.70))
    p = panel.model.control(i).pose.points[9]
    assert abs(p[0] - 0.30) < 0.01
    assert abs(p[1] - 0.70) < 0.01
    colours = {tuple(c) for c in np.unique(panel.model.control_image(i, 512, 512).reshape(-1, 3), axis=0)}
    assert {limb_color(7), limb_color(8), COLORS[9]} <= colours


def test_the_background_is_the_result_or_a_photo(qtbot, make_app, astronaut):
    app = make_app(FakeSession())
    _panel, editor, _i = _open_editor(qtbot, app, (512, 512))
    app.studio.generate()
    qtbot.waitUntil(lambda: app.studio.shown is not None, timeout=5000)
    assert editor.canvas.background is app.studio.shown.image
    editor.set_photo(astronaut)
    assert editor.canvas.background is astronaut
    assert editor.background.currentData() == "photo"
    editor.opacity.set_value(1.0, emit=True)
    editor.background.setCurrentIndex(editor.background.findData("none"))
    assert editor.canvas.background is None


def test_face_points_come_from_the_identitys_landmarks(qtbot, make_app, astronaut):
    app = make_app(FakeSession())
    panel, editor, i = _open_editor(qtbot, app, (512, 512))
    editor.presets.setCurrentIndex(editor.presets.findData("portrait"))
    editor.apply_preset.click()
    assert not editor.face.isEnabled()  # no identity yet
    app.studio.capture(astronaut, name="Astronaut")  # the fake keeps the photo as the aligned face
    qtbot.waitUntil(lambda: app.studio.identity is not None, timeout=5000)
    assert editor.face.isEnabled()
    assert panel.model.landmarks is None  # dlib runs only once face points are asked for
    editor.face.setChecked(True)
    qtbot.waitUntil(lambda: panel.model.landmarks is not None, timeout=30000)
    image = panel.model.control_image(i, 512, 512)
    face = np.asarray(panel.model.pose_of(i, 512, 512).face)
    assert face.shape == (68, 2)
    np.testing.assert_allclose(face[36:42].mean(0), preset("portrait").points[14], atol=1e-9)
    white = (image == FACE_COLOR).all(axis=2)
    assert white.sum() > 68 * 9
    assert np.array_equal(app.studio.current_request().controls[0].image, image)
    editor.face.setChecked(False)
    assert not (panel.model.control_image(i, 512, 512) == FACE_COLOR).all(axis=2).any()


def test_live_mode_renders_while_a_joint_is_dragged(qtbot, make_app):
    fake = FakeSession()
    app = make_app(fake)
    panel, editor, i = _open_editor(qtbot, app, (512, 512))
    app.studio.set_live(True)
    canvas = editor.canvas
    wrist = preset("standing").points[4]
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=_at(canvas, *wrist))
    qtbot.mouseMove(canvas, pos=_at(canvas, 0.2, 0.3))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=_at(canvas, 0.2, 0.3))
    final = panel.model.control_image(i, 512, 512)
    qtbot.waitUntil(lambda: any(np.array_equal(r.controls[0].image, final) for r in fake.renders_finished
                                if r.controls), timeout=5000)
    app.studio.cancel()  # no final render left pending when the app shuts down
