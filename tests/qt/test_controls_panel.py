"""ControlNet/LoRA state: the Qt-free view model, the panel, the request the engine receives, settings, restore."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PySide6.QtCore import Qt

from desktop.viewmodel.controls import ControlsModel, find_model_files
from engine.api import ControlKind, ControlSpec, GenerateRequest, LoraSpec
from engine.controls.canny import canny
from engine.controls.openpose import COLORS, pose_from_image, preset, render
from engine.errors import InvalidInput
from tests.conftest import REPO
from tests.qt.fakes import FakeSession


def _write_png(path, image) -> str:
    from PIL import Image

    Image.fromarray(image).save(path)
    return str(path)


def _pil_loader(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# -- the view model, without Qt ------------------------------------------------------------------------
def test_the_view_model_imports_no_qt():
    out = subprocess.run([sys.executable, "-c", "import sys, desktop.viewmodel.controls as m; m.ControlsModel()"
                          "; print('PySide6' in sys.modules, 'cv2' in sys.modules)"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False False", out.stderr


def test_pose_controls_become_control_specs_at_the_request_size():
    m = ControlsModel()
    events: list[str] = []
    m.subscribe(events.append)
    i = m.add_pose("sitting")
    with pytest.raises(InvalidInput, match="no ControlNet file"):
        m.control_specs(512, 640)
    m.update_control(i, model="/models/control_v11p_sd15_openpose.safetensors", scale=0.8, start=0.1, end=0.9)
    req = m.apply(GenerateRequest(width=512, height=640))
    (spec,) = req.controls
    assert spec.kind is ControlKind.OPENPOSE
    assert (spec.model, spec.scale, spec.start, spec.end) == ("/models/control_v11p_sd15_openpose.safetensors",
                                                              0.8, 0.1, 0.9)
    assert spec.image.shape == (640, 512, 3)
    assert np.array_equal(spec.image, render(preset("sitting"), 512, 640))
    m.update_control(i, enabled=False)
    assert m.apply(GenerateRequest()).controls == ()
    assert events[:2] == ["controls", "controls"]
    with pytest.raises(InvalidInput, match="start < end"):
        m.update_control(i, start=0.9, end=0.2)


def test_moving_a_keypoint_moves_it_in_the_control_image():
    m = ControlsModel()
    i = m.add_pose("standing", "/cn.safetensors")
    before = m.control_image(i, 512, 512)
    x0, y0 = (int(c * 512) for c in preset("standing").points[4])
    assert tuple(before[y0, x0]) == COLORS[4]
    m.move_keypoint(i, 4, 0.2, 0.8)
    after = m.control_image(i, 512, 512)
    assert tuple(after[int(0.8 * 512), int(0.2 * 512)]) == COLORS[4]
    assert tuple(after[y0, x0]) != COLORS[4]
    m.toggle_keypoint(i, 4)  # hidden: the forearm limb goes too
    assert m.control(i).pose.points[4] is None
    m.toggle_keypoint(i, 4)
    assert m.control(i).pose.points[4] == preset("standing").points[4]


def test_canny_and_image_controls(astronaut):
    m = ControlsModel()
    i = m.add_canny(astronaut, "astronaut.png", "/cn_canny")
    assert np.array_equal(m.control_image(i, 512, 512), canny(astronaut))
    m.update_control(i, low=50, high=120)
    assert np.array_equal(m.control_image(i, 512, 512), canny(astronaut, 50, 120))
    drawn = render(preset("hands up"), 300, 400)
    j = m.add_image(drawn, "pose.png", "/cn_pose")
    specs = m.control_specs(512, 512)
    assert [s.kind for s in specs] == [ControlKind.CANNY, ControlKind.IMAGE]
    assert np.array_equal(specs[1].image, drawn)  # used as is; the engine resizes and crops it
    assert "pose.png" in m.control(j).title


def test_lora_list_adds_removes_and_weights_reach_the_request():
    m = ControlsModel()
    a = m.add_lora("/loras/ink.safetensors", 0.7)
    m.add_lora("/loras/film.safetensors")
    m.update_lora(a, text_weight=0.3)
    assert m.lora_specs() == (LoraSpec("/loras/ink.safetensors", 0.7, 0.3), LoraSpec("/loras/film.safetensors", 1.0))
    assert m.lora_specs()[1].text == 1.0  # no text weight: the same as the UNet's (A1111)
    m.update_lora(1, enabled=False)
    assert m.apply(GenerateRequest()).loras == (LoraSpec("/loras/ink.safetensors", 0.7, 0.3),)
    m.remove_lora(0)
    assert m.apply(GenerateRequest()).loras == ()
    with pytest.raises(InvalidInput, match="finite"):
        m.update_lora(0, weight=float("inf"))


def test_json_keeps_everything_and_reads_photos_back(tmp_path, astronaut):
    m = ControlsModel()
    i = m.add_pose("portrait", "/cn_pose")
    m.move_keypoint(i, 0, 0.45, 0.4)
    m.update_control(i, face=True, scale=0.6)
    photo = _write_png(tmp_path / "photo.png", astronaut[::2, ::2])
    m.add_canny(_pil_loader(photo), photo, "/cn_canny")
    m.update_control(1, low=80)
    m.add_lora("/loras/a.safetensors", 0.5, 0.25)
    text = m.to_json()
    back = ControlsModel(image_loader=_pil_loader)
    assert back.load_json(text) == []
    assert back.control(0).pose == m.control(0).pose
    assert (back.control(0).face, back.control(0).scale) == (True, 0.6)
    assert np.array_equal(back.control_image(1, 512, 512), m.control_image(1, 512, 512))
    assert back.lora_specs() == m.lora_specs()
    # a photo that moved away is reported, the rest is kept
    (tmp_path / "photo.png").unlink()
    again = ControlsModel(image_loader=_pil_loader)
    problems = again.load_json(text)
    assert len(problems) == 1
    assert "photo.png" in problems[0]
    assert len(again.controls) == 1
    assert ControlsModel().load_json("{broken") != []


def test_restore_takes_the_requests_controls_and_keeps_the_rest_switched_off():
    m = ControlsModel()
    mine = m.add_pose("standing", "/cn_pose")
    m.add_lora("/loras/mine.safetensors", 0.4)
    same = GenerateRequest(controls=m.control_specs(512, 512), loras=m.lora_specs())
    m.restore(same)  # a history entry made from these controls: nothing changes
    assert len(m.controls) == 1
    assert m.control(mine).prepared is False
    assert len(m.loras) == 1
    # a PNG made with another pose and LoRA
    other = render(preset("hands up"), 512, 512)
    req = GenerateRequest(controls=(ControlSpec("/cn_other", other, 0.7, 0.0, 0.8, ControlKind.OPENPOSE),),
                          loras=(LoraSpec("/loras/theirs.safetensors", 0.9),))
    m.restore(req)
    assert [c.model for c in m.controls] == ["/cn_other", "/cn_pose"]
    assert [c.enabled for c in m.controls] == [True, False]
    assert np.array_equal(m.control_image(0, 512, 512), other)  # the stored image, exactly
    assert m.control(0).pose == pose_from_image(other)  # …and its keypoints, to edit
    assert m.apply(GenerateRequest()).loras == (LoraSpec("/loras/theirs.safetensors", 0.9),)
    assert [e.enabled for e in m.loras] == [True, False]
    m.move_keypoint(0, 4, 0.5, 0.5)  # once edited, the pose is drawn from its keypoints
    assert not m.control(0).prepared
    assert tuple(m.control_image(0, 512, 512)[256, 256]) == COLORS[4]


def test_models_folder_shortlist(tmp_path):
    (tmp_path / "controlnet").mkdir()
    (tmp_path / "controlnet" / "control_v11p_sd15_openpose.safetensors").write_bytes(b"x")
    folder = tmp_path / "control_v11p_sd15_canny"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "ink_lora.safetensors").write_bytes(b"x")
    found = find_model_files(tmp_path, "control")
    assert found == [folder, tmp_path / "controlnet" / "control_v11p_sd15_openpose.safetensors"]
    assert find_model_files(tmp_path, "lora") == [tmp_path / "loras" / "ink_lora.safetensors"]
    assert find_model_files(tmp_path / "nope", "control") == []


# -- the panel in the app, on a fake engine ----------------------------------------------------------
def test_the_engine_receives_the_controls_and_loras(qtbot, make_app, tmp_path):
    (tmp_path / "models" / "controlnet").mkdir(parents=True)
    cn = tmp_path / "models" / "controlnet" / "control_v11p_sd15_openpose.safetensors"
    cn.write_bytes(b"x")
    fake = FakeSession()
    app = make_app(fake)
    panel = app.window.controls_panel
    assert app.studio.controls is panel.model
    app.studio.generation.update(width=512, height=640)
    i = panel.add_pose()
    assert panel.model.control(i).model == str(cn)  # the models folder's openpose ControlNet, chosen for it
    assert panel.model_combo.currentData() == str(cn)
    panel.scale.set_value(0.65, emit=True)
    panel.end.set_value(0.8, emit=True)
    panel.add_lora_from(str(tmp_path / "ink.safetensors"))
    assert len(panel.lora_rows) == 1
    panel.lora_rows[0].weight.set_value(0.75, emit=True)
    panel.lora_rows[0].separate.setChecked(True)
    panel.lora_rows[0].text_weight.set_value(0.5, emit=True)
    app.studio.generate()
    qtbot.waitUntil(lambda: bool(fake.renders_finished), timeout=5000)
    req = fake.renders_finished[-1]
    (spec,) = req.controls
    assert (spec.model, spec.scale, spec.start, spec.end, spec.kind) == (str(cn), 0.65, 0.0, 0.8,
                                                                         ControlKind.OPENPOSE)
    assert np.array_equal(spec.image, render(preset("standing", 512 / 640), 512, 640))
    assert req.loras == (LoraSpec(str(tmp_path / "ink.safetensors"), 0.75, 0.5),)
    # a removed LoRA row and a switched-off control are gone from the next request
    panel.lora_rows[0].remove.click()
    assert panel.lora_rows == []
    assert panel.lora_empty.isVisibleTo(panel)
    panel.list.item(0).setCheckState(Qt.CheckState.Unchecked)
    assert panel.model.control(0).enabled is False
    app.studio.generate()
    qtbot.waitUntil(lambda: len(fake.renders_finished) == 2, timeout=5000)
    assert fake.renders_finished[-1].controls == ()
    assert fake.renders_finished[-1].loras == ()


def test_a_control_without_a_controlnet_says_so_in_the_banner(qtbot, make_app):
    fake = FakeSession()
    app = make_app(fake)
    app.window.controls_panel.add_pose()
    app.studio.generate()
    qtbot.waitUntil(lambda: app.window.banner.isVisible(), timeout=3000)
    assert "no ControlNet file" in app.window.banner.message.text()
    assert not fake.renders_started


def test_canny_from_a_photo_and_use_this_image(qtbot, make_app, tmp_path, astronaut):
    app = make_app(FakeSession())
    panel = app.window.controls_panel
    photo = _write_png(tmp_path / "astronaut.png", astronaut)
    i = panel.add_canny_from(photo)
    assert panel.low.isVisibleTo(panel)
    assert not panel.edit_pose.isVisibleTo(panel)
    panel.high.setValue(300)
    assert np.array_equal(panel.model.control_image(i, 512, 512), canny(astronaut, 100, 300))
    made = render(preset("sitting"), 512, 512)
    j = panel.add_image_from(_write_png(tmp_path / "my_pose.png", made))
    assert np.array_equal(panel.model.control_image(j, 512, 512), made)
    assert panel.list.count() == 2
    assert "my_pose.png" in panel.list.item(1).text()
    panel.remove_button.click()
    assert panel.list.count() == 1


def test_controls_and_loras_are_remembered_between_runs(qtbot, make_app, tmp_path, astronaut):
    app = make_app(FakeSession())
    panel = app.window.controls_panel
    i = panel.add_pose()
    panel.choose_model(i, "/models/cn_openpose.safetensors")
    panel.model.move_keypoint(i, 7, 0.9, 0.1)
    panel.add_canny_from(_write_png(tmp_path / "photo.png", astronaut))
    panel.add_lora_from("/loras/ink.safetensors", 0.6)
    pose = panel.model.control(i).pose
    app.shutdown()
    from desktop.app import AppOptions, StudioApp

    again = StudioApp(AppOptions(settings_path=tmp_path / "settings.ini", log_dir=tmp_path / "logs2",
                                 data_dir=tmp_path / "data", models_dir=tmp_path / "models",
                                 session_factory=lambda _c: FakeSession(), start_engine=False, preload_faces=False))
    try:
        m = again.window.controls_panel.model
        assert [c.kind for c in m.controls] == [ControlKind.OPENPOSE, ControlKind.CANNY]
        assert m.control(0).pose == pose
        assert m.control(0).model == "/models/cn_openpose.safetensors"
        assert np.array_equal(m.control_image(1, 512, 512), canny(astronaut))
        assert m.lora_specs() == (LoraSpec("/loras/ink.safetensors", 0.6),)
        assert again.window.controls_panel.list.count() == 2
        assert len(again.window.controls_panel.lora_rows) == 1
    finally:
        again.shutdown()
        again.window.close()
        from desktop.logs import remove_logging

        remove_logging(tmp_path / "logs2")


def test_restoring_a_request_restores_the_controls_in_the_panel(qtbot, make_app):
    app = make_app(FakeSession())
    panel = app.window.controls_panel
    image = render(preset("hands up"), 512, 512)
    req = GenerateRequest(prompt="restored", controls=(ControlSpec("/cn/openpose", image, 0.9, 0.1, 0.7,
                                                                   ControlKind.OPENPOSE),),
                          loras=(LoraSpec("/loras/x.safetensors", 0.8, 0.2),))
    app.studio.restore_request(req, source="x.png")  # what dropping a PNG does once its request is read
    assert panel.list.count() == 1
    assert panel.model.control(0).pose == pose_from_image(image)
    assert (panel.scale.value(), panel.start.value(), panel.end.value()) == (0.9, 0.1, 0.7)
    assert len(panel.lora_rows) == 1
    assert panel.lora_rows[0].weight.value() == 0.8
    assert panel.lora_rows[0].text_weight.value() == 0.2
    out = app.studio.current_request()
    assert np.array_equal(out.controls[0].image, image)
    assert out.loras == req.loras


def test_dropping_a_saved_png_restores_its_controls_and_loras(qtbot, make_app, tmp_path):
    import engine.pipeline.metadata as metadata

    if not hasattr(metadata, "lora_tags"):
        pytest.skip("engine.pipeline.metadata does not store controls and LoRAs yet (the controls branch adds it)")
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDropEvent

    fake = FakeSession()
    app = make_app(fake, metadata=metadata)
    panel = app.window.controls_panel
    i = panel.add_pose()
    panel.choose_model(i, str(tmp_path / "control_v11p_sd15_openpose.safetensors"))
    panel.model.move_keypoint(i, 4, 0.2, 0.3)
    panel.model.update_control(i, scale=0.7, end=0.9)
    panel.add_lora_from(str(tmp_path / "ink.safetensors"), 0.6)
    saved_image = panel.model.control_image(i, 512, 512)
    app.studio.generate()
    qtbot.waitUntil(lambda: bool(app.studio.history), timeout=5000)
    png = tmp_path / "with_controls.png"
    with qtbot.waitSignal(app.client.saved, timeout=5000):
        app.studio.save_shown(png)
    # the artist moves on: another pose, no LoRA
    panel.model.apply_preset(i, "sitting")
    panel.lora_rows[0].remove.click()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(png))])
    app.window.dropEvent(QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                    Qt.KeyboardModifier.NoModifier))
    qtbot.waitUntil(lambda: len(panel.lora_rows) == 1, timeout=5000)
    first = panel.model.control(0)
    assert (first.model, first.scale, first.end, first.enabled) == (str(tmp_path / "control_v11p_sd15_openpose"
                                                                        ".safetensors"), 0.7, 0.9, True)
    assert np.array_equal(panel.model.control_image(0, 512, 512), saved_image)
    assert abs(first.pose.points[4][0] - 0.2) < 2 / 512  # editable again, where it was dragged
    assert panel.model.control(1).enabled is False  # the sitting pose is kept, switched off
    assert panel.model.lora_specs() == (LoraSpec(str(tmp_path / "ink.safetensors"), 0.6),)
    assert np.array_equal(app.studio.current_request().controls[0].image, saved_image)
