"""The first ten minutes on the REAL engine (`engine.session.Session`) with tiny models, under pytest-qt:
models partly missing, files given on the command line, consent, draft → refine, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from tests.qt.test_desktop_capture_e2e import _real_factory

tiny = pytest.importorskip("engine.testing.tiny")


def _real_app(qtbot, make_app, models, **options):
    app = make_app(factory=_real_factory(tiny.tiny_config(models)), **options)
    qtbot.waitUntil(lambda: app.studio.model_states is not None and bool(app.studio.catalog), timeout=120_000)
    return app


def _with_identity(app, seed: int = 3):
    from engine.api import Identity

    entry = app.library.add(Identity("", "Tiny", tiny.tiny_wplus(seed)), persist=False)
    app.studio.select_identity(entry.identity.id)
    return entry


def test_models_partly_missing_say_what_works_and_never_cover_a_render(qtbot, make_app, tiny_models):
    app = _real_app(qtbot, make_app, tiny_models)
    report = app.studio.models
    missing = {m.id for m in report.missing_required + report.missing_optional}
    assert "parsenet" in missing
    assert "parsenet" not in {m.id for m in report.missing_required}  # the parser is optional
    assert report.can_generate  # tiny SD1.5 and adapter are there
    assert not report.can_capture
    assert [m.id for m in report.missing_required] == ["e4e"]
    rv, w = app.window.result_view, app.window
    assert rv.stack.currentWidget() is not rv.guidance  # generation works: no panel over the result area
    assert w.status_models.text().startswith("⚠ e4e missing · ")
    assert "parsenet" in w.status_models.text()
    assert "(optional)" in w.status_models.text()
    assert "background" in w.status_models.toolTip()
    # a render runs and its result is shown; the guidance never comes back over it
    _with_identity(app)
    app.studio.generation.update(width=tiny.TINY_IMAGE, height=tiny.TINY_IMAGE, steps=3, n=1)
    gen = app.studio.generate()
    qtbot.waitUntil(lambda: app.studio.shown is not None and app.studio.shown.gen == gen, timeout=120_000)
    app.client.check_models()
    qtbot.wait(300)
    assert rv.stack.currentWidget() is rv.image
    assert rv.image.has_image


def test_guidance_lists_costs_when_generation_is_impossible(qtbot, make_app, tiny_models, tmp_path):
    import shutil

    models = tmp_path / "no-adapter"
    shutil.copytree(tiny_models, models, ignore=shutil.ignore_patterns("wplus_adapter*"))
    app = make_app(factory=_real_factory(tiny.tiny_config(models)))
    qtbot.waitUntil(lambda: app.studio.model_states is not None, timeout=120_000)
    rv = app.window.result_view
    assert not app.studio.models.can_generate
    assert rv.stack.currentWidget() is rv.guidance
    text = rv.guidance.body.text()
    assert "Works now" in text
    assert "camera" in text
    assert "wplus-adapter" in text
    assert "no image generation" in text
    assert "parsenet" in text
    assert "background whitening" in text
    assert rv.guidance.title.text() == "Generation needs more model files"


class _StepLog:
    """The real session, with each denoising report logged on the worker: (step, token already cancelled)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.steps: list[tuple[int, bool]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def render(self, request, token=None, progress=None):
        def report(p):
            self.steps.append((p.step, bool(token is not None and token.cancelled)))
            if progress is not None:
                progress(p)

        return self.inner.render(request, token, report)


def test_cancel_is_acknowledged_at_once_and_stops_at_a_step_boundary(qtbot, make_app, tiny_models):
    from engine.session import Session

    logged = _StepLog(Session(tiny.tiny_config(tiny_models)))
    app = make_app(factory=lambda _cfg: logged)
    qtbot.waitUntil(lambda: app.studio.model_states is not None and bool(app.studio.catalog), timeout=120_000)
    _with_identity(app)
    app.studio.generation.update(width=tiny.TINY_IMAGE, height=tiny.TINY_IMAGE, steps=150, n=1)
    steps: list[int] = []
    app.studio.progress_changed.connect(lambda p: p is not None and steps.append(p.step))
    gp, w = app.window.generation_panel, app.window
    app.studio.generate()
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=120_000)
    w.act_cancel.trigger()  # what Esc does
    # acknowledged before the engine has done anything more
    assert w.status_state.text().startswith("Cancelling…")
    assert gp.cancel.text() == "Cancelling…"
    assert not gp.cancel.isEnabled()
    assert not gp.generate.isEnabled()
    assert not gp.draft.isEnabled()
    qtbot.waitUntil(lambda: not app.studio.busy, timeout=60_000)
    # effective at the next step boundary: at most the step under way finished after the token was set
    after = [step for step, cancelled in logged.steps if cancelled]
    assert len(after) <= 1, logged.steps[-5:]
    last = logged.steps[-1][0]
    assert last < 150
    assert w.status_state.text().startswith(f"Cancelled after step {last} of 150 ")
    assert app.studio.shown is None  # nothing half-done is shown
    assert gp.generate.isEnabled()
    assert gp.cancel.text() == "Cancel"
    assert not gp.cancel.isEnabled()


def test_draft_then_refine_renders_the_same_request_in_full(qtbot, make_app, tiny_models):
    app = _real_app(qtbot, make_app, tiny_models)
    entry = _with_identity(app, seed=4)
    full_side = 2 * tiny.TINY_IMAGE
    app.studio.generation.update(width=full_side, height=full_side, steps=14, n=1, seed=77, seed_locked=True)
    w = app.window
    w.generation_panel.draft.click()
    qtbot.waitUntil(lambda: app.studio.shown is not None, timeout=120_000)
    draft = app.studio.shown
    assert draft.is_draft
    assert draft.image.shape == (full_side // 2, full_side // 2, 3)
    assert draft.request.steps == 12
    assert draft.seed == 77
    assert w.status_shown.text() == "Draft shown"
    assert "Refine renders" in w.status_state.text()
    assert w.generation_panel.refine.isEnabled()
    w.generation_panel.refine.click()
    qtbot.waitUntil(lambda: app.studio.shown is not draft and app.studio.shown is not None, timeout=180_000)
    full = app.studio.shown
    assert not full.is_draft
    assert full.image.shape == (full_side, full_side, 3)
    assert (full.request.steps, full.seed) == (14, 77)
    np.testing.assert_array_equal(full.request.wplus, entry.identity.wplus)
    assert w.status_shown.text() == "Full render shown"
    assert w.status_state.text() == f"Showing the full render ({full_side}×{full_side}, 14 steps, seed 77)."
    assert not w.generation_panel.refine.isEnabled()


def test_draft_is_the_first_button_on_the_cpu_and_generate_on_a_gpu(qtbot, make_app, tiny_models):
    app = _real_app(qtbot, make_app, tiny_models)  # tiny_config: device "cpu"
    gp = app.window.generation_panel
    assert app.studio.device == "cpu"
    assert gp.draft.objectName() == "primary"
    assert gp.generate.objectName() != "primary"
    app.studio.on_device("cuda")
    assert gp.generate.objectName() == "primary"
    assert gp.draft.objectName() != "primary"
    # Generate sends the panel's settings, whose defaults are the official notebook's
    from desktop.viewmodel.generation import GenerationSettings

    official = GenerationSettings()
    assert (official.steps, official.width, official.height, official.guidance, official.scheduler) == (
        30, 512, 512, 7.5, "euler")


def test_a_photo_on_the_command_line_asks_consent_then_goes_to_the_real_face_chain(qtbot, make_app,
                                                                                   decoder_only_models):
    from pathlib import Path

    import skimage

    from desktop.views.dialogs import LicenceDialog

    app = _real_app(qtbot, make_app, decoder_only_models, consent=False)
    photo = Path(skimage.__file__).parent / "data" / "astronaut.png"
    app.open_files([str(photo)])  # what `wplus-studio astronaut.png` does after the window appears
    qtbot.waitUntil(lambda: app.window._consent_dialog is not None and app.window._consent_dialog.isVisible(),
                    timeout=30_000)
    assert app.window.camera_panel.view.has_image  # the photo is shown while the note is read
    assert app.client.render_calls == 0
    assert app.studio.identity is None
    dlg = app.window._consent_dialog
    dlg.agree.setChecked(True)
    dlg.done(LicenceDialog.DialogCode.Accepted)
    # the real chain ran: detection and alignment worked, then this e4e file has no encoder part
    qtbot.waitUntil(lambda: app.window.banner.isVisible(), timeout=120_000)
    assert "e4e_ffhq_encode.safetensors" in app.window.banner.message.text()
    assert app.settings.value("consent/accepted") == "true"


def test_one_of_our_pngs_on_the_command_line_restores_its_settings(qtbot, make_app, tiny_models, tmp_path):
    app = _real_app(qtbot, make_app, tiny_models)
    _with_identity(app, seed=6)
    app.studio.generation.update(width=tiny.TINY_IMAGE, height=tiny.TINY_IMAGE, steps=2, n=1, seed=1234,
                                 prompt="a tiny test portrait")
    gen = app.studio.generate()
    qtbot.waitUntil(lambda: app.studio.shown is not None and app.studio.shown.gen == gen, timeout=120_000)
    out = tmp_path / "result.png"
    with qtbot.waitSignal(app.client.saved, timeout=10_000):
        app.studio.save_shown(out)
    app.studio.generation.update(seed=5, prompt="something else", steps=9)
    app.open_files([str(out)])
    qtbot.waitUntil(lambda: app.studio.generation.settings.seed == 1234, timeout=10_000)
    s = app.studio.generation.settings
    assert (s.prompt, s.steps) == ("a tiny test portrait", 2)
    assert app.window.status_state.text() == "Restored the settings of result.png."
