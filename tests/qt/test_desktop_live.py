"""Live mode: quick slider moves coalesce into a few renders, and the last state is what is shown."""

from __future__ import annotations

import numpy as np

from engine.api import EditState
from tests.qt.fakes import FakeSession, request_marker


def test_fifty_quick_slider_moves_give_a_few_renders_and_the_last_is_shown(qtbot, make_app):
    fake = FakeSession(step_delay=0.01)  # 12 live steps ≈ 0.12 s, 30 full steps ≈ 0.3 s
    app = make_app(fake)
    app.studio.capture(np.full((200, 200, 3), 128, np.uint8), name="Live")
    qtbot.waitUntil(lambda: app.studio.identity is not None, timeout=5000)
    app.studio.set_live(True)
    slider = app.window.edit_panel.sliders["age"]
    slider.slider.setSliderDown(True)  # a drag: transient values, one undo step at release
    for i in range(1, 51):
        slider.slider.setValue(slider.slider.minimum() + i)
        qtbot.wait(2)  # events flow between moves, as during a real drag (≈0.1 s for all 50)
    slider.slider.setSliderDown(False)  # emits sliderReleased, as a mouse release does
    final = app.edits.state
    assert final == EditState.from_mapping({"age": slider.value()})
    qtbot.waitUntil(lambda: not app.client.busy and app.studio.shown is not None
                    and app.studio.shown.request.edits == final and app.studio.shown.request.steps == 30,
                    timeout=10000)
    started = len(fake.renders_started)
    assert 1 <= started <= 10, f"{started} renders for 50 moves"
    assert fake.renders_finished[-1].edits == final
    assert app.studio.newest_render_gen == app.studio.shown.gen
    img = app.studio.shown.image
    assert (int(img[0, 0, 0]), int(img[0, 0, 1])) == request_marker(app.studio.shown.request)
    # the drag was one undo step
    app.edits.undo()
    assert app.edits.state == EditState()


def test_live_renders_are_cheap_and_the_release_renders_at_full_quality(qtbot, make_app):
    fake = FakeSession(step_delay=0.002)
    app = make_app(fake)
    app.studio.capture(np.full((64, 64, 3), 90, np.uint8))
    qtbot.waitUntil(lambda: app.studio.identity is not None, timeout=5000)
    app.studio.generation.update(live=True, live_steps=6, n=3)
    app.edits.set_value("smile", 1.0, transient=True)
    qtbot.waitUntil(lambda: any(r.steps == 6 for r in fake.renders_finished), timeout=5000)
    live = [r for r in fake.renders_finished if r.steps == 6]
    assert all(r.n == 1 for r in live)
    assert app.studio.history == []  # live frames are not history
    app.edits.commit()  # release
    app.edits.set_value("smile", 1.0)  # non-transient change path: full quality
    qtbot.waitUntil(lambda: len(app.studio.history) == 3, timeout=5000)
    assert app.studio.history[-1].request.steps == 30
    assert app.studio.history[-1].request.n == 3
