"""The studio on the REAL engine (engine.session.Session) with tiny real models: an image on screen."""

from __future__ import annotations

import numpy as np

from engine.testing import tiny


def test_real_engine_renders_an_image_into_the_window(qtbot, make_app, tiny_models):
    from engine.api import Identity

    config = tiny.tiny_config(tiny_models)

    def factory(_cfg):
        from engine.session import Session  # the real facade, as desktop.engine_client would open it

        return Session(config)

    app = make_app(factory=factory)
    qtbot.waitUntil(lambda: app.studio.model_states is not None, timeout=120_000)
    entry = app.library.add(Identity("", "Tiny", tiny.tiny_wplus(3)), persist=False)
    app.studio.select_identity(entry.identity.id)
    app.studio.generation.update(width=tiny.TINY_IMAGE, height=tiny.TINY_IMAGE, steps=3, n=1)
    steps: list[int] = []
    app.studio.progress_changed.connect(lambda p: p is not None and steps.append(p.step))
    gen = app.studio.generate()
    qtbot.waitUntil(lambda: app.studio.shown is not None, timeout=180_000)
    shown = app.studio.shown
    assert shown.gen == gen
    img = shown.image
    assert img.shape == (tiny.TINY_IMAGE, tiny.TINY_IMAGE, 3)
    assert img.dtype == np.uint8
    assert img.std() > 0  # a real decoded image, not a constant placeholder
    assert steps
    assert steps[-1] == 3
    assert app.window.result_view.image.has_image
    assert shown.request.wplus is not None
    np.testing.assert_array_equal(shown.request.wplus, entry.identity.wplus)
    # the engine's own catalog built the sliders
    assert len(app.window.edit_panel.sliders) == len(app.studio.catalog) > 0
