"""The real app on the real engine (`engine.session.Session`, opened by the bridge as in the product):
camera → capture → face chain → W+ → StyleGAN2 preview → slider → generation → the image on screen.

Weights: the tiny random SD1.5 + W+ adapter of `engine.testing.tiny`, and e4e files written here with
rule weights. The full-size e4e (1.2 GB, ≈16 s to write, ≈10 s to load and encode on 2 cores) makes
the whole capture test ≈45–60 s, so it is opt-in (`-m slow`); the default test uses a decoder-only
e4e file of a reduced-channel StyleGAN2 (the same code path, 18×512 W+): the preview works from it,
and a capture explains that the encoder part is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.testing import tiny


def _astronaut_spec() -> str:
    import skimage

    return f"file:{Path(skimage.__file__).parent / 'data' / 'astronaut.png'}"


def _real_factory(config):
    def factory(_cfg):
        from engine.session import Session  # the real facade, as desktop.engine_client opens it

        return Session(config)

    return factory


def _start_still_camera(qtbot, app) -> None:
    w = app.window
    w.camera_panel.picker.addItem("astronaut.png (still)", _astronaut_spec())
    w.camera_panel.picker.setCurrentIndex(w.camera_panel.picker.count() - 1)
    w.camera_panel.toggle.setChecked(True)
    qtbot.waitUntil(lambda: w.camera_panel.view.analysis is not None and w.camera_panel.view.analysis.box is not None,
                    timeout=60_000)


def test_decoder_only_e4e_gives_the_preview_and_capture_names_the_missing_encoder(qtbot, make_app,
                                                                                    decoder_only_models):
    from engine.api import Identity

    app = make_app(factory=_real_factory(tiny.tiny_config(decoder_only_models)), preload_faces=True)
    qtbot.waitUntil(lambda: app.studio.model_states is not None, timeout=120_000)
    # the face preview of a stored identity: the real StyleGAN2 from the decoder-only file, exact
    entry = app.library.add(Identity("", "Stored", tiny.tiny_wplus(5)), persist=False)
    app.studio.select_identity(entry.identity.id)
    view = app.window.identity_panel.preview_view
    qtbot.waitUntil(lambda: view.has_image, timeout=60_000)
    assert view._caption == "e4e reconstruction"
    assert view._image.width() == 256
    first = view._image.copy()
    # a slider moves the preview (real directions on the real generator)
    app.edits.set_value("age" if "age" in app.window.edit_panel.sliders else next(iter(app.window.edit_panel.sliders)),
                        3.0)
    qtbot.waitUntil(lambda: view._caption.startswith("edited"), timeout=60_000)
    assert view._image != first
    # capture from the still camera: the chain detects and aligns, then the encoder part is missing
    _start_still_camera(qtbot, app)
    app.window.capture()
    qtbot.waitUntil(lambda: app.window.banner.isVisible(), timeout=120_000)
    text = app.window.banner.message.text()
    assert "input_layer.0.weight" in text
    assert "e4e_ffhq_encode.safetensors" in text
    assert app.studio.identity.identity.id == entry.identity.id  # nothing replaced the current identity
    app.camera.stop()


@pytest.fixture(scope="module")
def full_models(tiny_models, tmp_path_factory, fixtures_dir):
    """The tiny models plus the full-size rule-weight e4e in its official layout (1.2 GB)."""
    import shutil

    from engine.testing.official_files import write_official_e4e

    root = tmp_path_factory.mktemp("full") / "models"
    shutil.copytree(tiny_models, root)
    keys = json.loads((fixtures_dir / "e4e_manifest.json").read_text())["keys"]
    write_official_e4e(root / "e4e_ffhq_encode.pt", {e["key"]: tuple(e["shape"]) for e in keys})
    return root


@pytest.mark.slow
def test_real_capture_to_generated_image(qtbot, make_app, full_models):
    """Still camera → Capture → detect → align → (no parser) → e4e → identity + exact reconstruction →
    slider → generate with the tiny SD1.5 → the image on screen (≈45–60 s on 2 cores)."""
    app = make_app(factory=_real_factory(tiny.tiny_config(full_models)), preload_faces=True)
    qtbot.waitUntil(lambda: app.studio.model_states is not None, timeout=120_000)
    _start_still_camera(qtbot, app)
    app.window.capture()
    qtbot.waitUntil(lambda: app.studio.identity is not None, timeout=300_000)
    ident = app.studio.identity.identity
    assert ident.wplus.shape == (1, 18, 512)
    assert np.isfinite(ident.wplus).all()
    assert ident.aligned_face.shape == (512, 512, 3)
    assert ident.info["whitened"] is False
    panel = app.window.identity_panel
    assert panel.note.isVisible()
    assert "not whitened" in panel.note.text()
    qtbot.waitUntil(lambda: panel.preview_view.has_image, timeout=120_000)
    assert panel.preview_view._caption == "e4e reconstruction"
    recon = panel.preview_view._image.copy()
    # a slider, then a generation with the identity
    app.edits.set_value("age" if "age" in app.window.edit_panel.sliders else next(iter(app.window.edit_panel.sliders)),
                        1.5)
    qtbot.waitUntil(lambda: panel.preview_view._caption.startswith("edited"), timeout=60_000)
    assert panel.preview_view._image != recon
    app.studio.generation.update(width=tiny.TINY_IMAGE, height=tiny.TINY_IMAGE, steps=3, n=1)
    gen = app.studio.generate()
    qtbot.waitUntil(lambda: app.studio.shown is not None and app.studio.shown.gen == gen, timeout=180_000)
    shown = app.studio.shown
    assert shown.image.shape == (tiny.TINY_IMAGE, tiny.TINY_IMAGE, 3)
    assert shown.image.std() > 0
    np.testing.assert_array_equal(shown.request.wplus, ident.wplus)
    assert shown.request.edits.as_dict()
    assert app.window.result_view.image.has_image
    assert not app.window.banner.isVisible()
    app.camera.stop()
