"""A result's warnings reach the user, not only the log: the per-request backend fallback ("Rendered on
torch: …", the first of `Result.warnings` when the export lacks a LoRA set, a ControlNet graph or a FreeU
variant) shows in the status bar, in the banner (amber) and beside the result, also when the result is
shown again from the history; a clean result clears the banner's warning but never an error."""

from __future__ import annotations

import numpy as np

from tests.qt.fakes import FakeSession

FALLBACK = ("Rendered on torch: the ONNX Runtime export in models/onnx has no LoRA set 'ink_sketch:0.8' "
            "(export it with `python -m export onnx --lora ink_sketch:0.8`).")
TRUNCATED = "The prompt was truncated to CLIP's 77 tokens."


def _face_image() -> np.ndarray:
    img = np.zeros((480, 640, 3), np.uint8)
    img[100:380, 220:420] = (220, 170, 140)
    return img


def _render(qtbot, app) -> None:
    before = len(app.studio.history)
    app.studio.generate()
    qtbot.waitUntil(lambda: len(app.studio.history) > before and not app.studio.busy, timeout=5000)


def test_the_torch_fallback_of_a_request_is_shown_to_the_user(qtbot, make_app):
    fake = FakeSession()
    app = make_app(fake)
    w = app.window
    app.studio.capture(_face_image(), name="Ada")
    qtbot.waitUntil(lambda: app.studio.identity is not None, timeout=5000)
    fake.warnings = (FALLBACK, TRUNCATED)
    _render(qtbot, app)

    # the status bar leads with the fallback sentence
    assert w.status_state.text() == f"⚠ {FALLBACK}"
    # the banner, amber (a warning, not an error), with the reason and the export command in full
    assert w.banner.isVisible()
    assert w.banner.kind == "warning"
    assert w.banner.property("kind") == "warning"
    assert w.banner.message.text() == FALLBACK
    assert "python -m export onnx --lora ink_sketch:0.8" in w.banner.message.text()
    assert w.banner.hint.text() == TRUNCATED
    # beside the result: a short mark, the full texts in its tooltip
    label = w.result_view.warning_label
    assert label.isVisible()
    assert label.text() == "⚠ Rendered on torch (+1)"
    assert label.toolTip() == f"{FALLBACK}\n\n{TRUNCATED}"

    # a clean render: the warning goes, from the banner and from beside the result
    fake.warnings = ()
    _render(qtbot, app)
    assert not w.banner.isVisible()
    assert not label.isVisible()
    assert not w.status_state.text().startswith("⚠")

    # the first result, shown again from the history, still says where it was rendered
    w.result_view.history_clicked.emit(0)
    assert label.isVisible()
    assert FALLBACK in label.toolTip()


def test_a_warning_never_hides_an_error_in_the_banner(qtbot, make_app):
    from desktop.viewmodel.reports import FailureInfo

    fake = FakeSession()
    app = make_app(fake)
    w = app.window
    w.show_error(FailureInfo("render", "Out of memory.", "Try a smaller size.", "", "OutOfMemory"))
    fake.warnings = (FALLBACK,)
    _render(qtbot, app)
    assert w.banner.kind == "error"
    assert w.banner.message.text() == "Out of memory."
    assert w.status_state.text() == f"⚠ {FALLBACK}"  # still told, in the status bar and beside the result
    assert w.result_view.warning_label.isVisible()
    fake.warnings = ()
    _render(qtbot, app)
    assert w.banner.isVisible()  # a clean result clears warnings only
    assert w.banner.kind == "error"
