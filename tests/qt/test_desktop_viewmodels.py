"""The view models and controllers without a QApplication: plain objects, manual timers, a recording client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from desktop.viewmodel.capture import CaptureController, ConsentGate
from desktop.viewmodel.edits import EditHistory
from desktop.viewmodel.generation import DRAFT_STEPS, GenerationSettings, GenerationState, draft_request
from desktop.viewmodel.identities import IdentityLibrary
from desktop.viewmodel.models import models_report
from desktop.viewmodel.studio import StudioState, describe_shown
from engine.api import Identity, ModelState, ModelStatus, Progress, Result
from tests.conftest import REPO


class ManualTimer:
    def __init__(self, callback) -> None:
        self.callback = callback
        self.ms: int | None = None

    def start(self, ms: int) -> None:
        self.ms = ms

    def stop(self) -> None:
        self.ms = None

    def is_active(self) -> bool:
        return self.ms is not None

    def fire(self) -> None:
        self.ms = None
        self.callback()


class Timers:
    def __init__(self) -> None:
        self.made: list[ManualTimer] = []

    def __call__(self, callback) -> ManualTimer:
        t = ManualTimer(callback)
        self.made.append(t)
        return t


class RecordingClient:
    """Stands in for the bridge's request side: records what the view model asks for."""

    def __init__(self) -> None:
        self.gen = 0
        self.renders: list = []
        self.encodes: list = []
        self.cancels = 0
        self.reads: list[str] = []
        self.loads: list[str] = []

    def _next(self) -> int:
        self.gen += 1
        return self.gen

    def submit_render(self, request, *, live=False, identity_face=None) -> int:
        self.renders.append((request, live))
        return self._next()

    def submit_preview(self, wplus, edits, size=256, *, exact=False) -> int:
        return self._next()

    def encode(self, image, *, name="", aligned=False, restore=False) -> int:
        self.encodes.append(("one", image, name))
        return self._next()

    def encode_burst(self, images, *, name="") -> int:
        self.encodes.append(("burst", list(images), name))
        return self._next()

    def cancel(self) -> None:
        self.cancels += 1

    def read_request(self, path) -> None:
        self.reads.append(str(path))

    def load_image(self, path) -> None:
        self.loads.append(str(path))


def _studio(tmp_path: Path):
    client, timers = RecordingClient(), Timers()
    studio = StudioState(client, IdentityLibrary(tmp_path / "ids"), EditHistory(), GenerationState(), timers)
    return studio, client, timers


def _result(request) -> Result:
    return Result(request, (np.full((request.height, request.width, 3), 7, np.uint8),), (request.seed,))


def test_the_view_models_run_without_qt(tmp_path):
    code = (
        "from pathlib import Path; import tempfile\n"
        "from tests.qt.test_desktop_viewmodels import _studio\n"
        "studio, client, _ = _studio(Path(tempfile.mkdtemp()))\n"
        "studio.generate(); studio.draft()\n"
        "import sys; print('PySide6' in sys.modules, len(client.renders))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "2"]


def test_draft_is_smaller_and_shorter_with_the_same_seed_identity_and_edits(tmp_path):
    studio, client, _ = _studio(tmp_path)
    entry = studio.library.add(Identity("", "Ada", np.ones((1, 18, 512), np.float32)), persist=False)
    studio.select_identity(entry.identity.id)
    studio.edits.set_value("age", 1.5)
    studio.generation.update(width=512, height=640, steps=30, n=3, seed=41, seed_locked=True)
    gen = studio.draft()
    draft, live = client.renders[-1]
    assert not live
    assert (draft.width, draft.height, draft.steps, draft.n) == (256, 320, DRAFT_STEPS, 1)
    assert draft.seed == 41
    assert draft.edits.as_dict() == {"age": 1.5}
    np.testing.assert_array_equal(draft.wplus, entry.identity.wplus)
    statuses: list[str] = []
    studio.status_message.connect(statuses.append)
    studio.on_result(gen, _result(draft), 0)
    assert studio.shown.is_draft
    assert studio.can_refine
    assert statuses[-1].startswith("Showing a draft (256×320, 12 steps, seed 41)")
    # Refine: the same request at the full settings, even after the panel changed
    studio.generation.update(seed=99, steps=5)
    studio.refine()
    full, _ = client.renders[-1]
    assert (full.width, full.height, full.steps, full.n, full.seed) == (512, 640, 30, 3, 41)
    studio.on_result(client.gen, _result(full), 0)
    assert not studio.shown.is_draft
    assert not studio.can_refine
    assert describe_shown(studio.shown) == "Showing the full render (512×640, 30 steps, seed 41)."


def test_draft_never_grows_a_small_request():
    req = GenerationSettings(width=64, height=64, steps=4).request()
    assert (draft_request(req).width, draft_request(req).steps) == (64, 4)


def test_cancel_is_acknowledged_at_once_and_the_status_says_where_it_stopped(tmp_path):
    studio, client, _ = _studio(tmp_path)
    states: list[bool] = []
    statuses: list[str] = []
    studio.cancelling_changed.connect(states.append)
    studio.status_message.connect(statuses.append)
    gen = studio.generate()
    studio.on_busy(1)
    studio.on_progress(gen, Progress("denoise", 3, 30, 45.0))
    studio.cancel()
    assert client.cancels == 1
    assert states == [True]
    assert studio.cancelling
    assert statuses[-1].startswith("Cancelling…")
    studio.cancel()  # a second Esc asks the bridge again but announces nothing new
    assert states == [True]
    studio.on_cancelled(gen)
    studio.on_busy(0)
    assert states == [True, False]
    assert statuses[-1] == "Cancelled after step 3 of 30 (45.0 s)."


def test_cancel_while_idle_announces_nothing(tmp_path):
    studio, client, _ = _studio(tmp_path)
    studio.cancel()
    assert client.cancels == 1
    assert not studio.cancelling


def test_live_drag_is_throttled_on_the_injected_timer(tmp_path):
    studio, client, timers = _studio(tmp_path)
    studio.generation.update(live=True)
    n = len(client.renders)
    studio.edits.set_value("age", 0.5, transient=True)  # leading edge: at once
    studio.edits.set_value("age", 0.7, transient=True)  # within 80 ms: waits for the timer
    assert len(client.renders) == n + 1
    pending = [t for t in timers.made if t.is_active()]
    assert pending
    for t in pending:
        t.fire()
    assert client.renders[-1][1] is True  # the trailing live render
    assert client.renders[-1][0].edits.as_dict() == {"age": 0.7}


def _states(*missing: str) -> tuple[ModelState, ...]:
    rows = (("sd15", "sd15", True), ("wplus-adapter", "adapter", True), ("e4e", "e4e", True),
            ("parsenet", "parser", False), ("sd-vae-ft-mse", "vae", False))
    return tuple(ModelState(i, r, f"{i}.safetensors", req, ModelStatus.MISSING if i in missing else ModelStatus.OK)
                 for i, r, req in rows)


def test_models_report_says_what_works_and_what_each_missing_file_costs():
    only_parser = models_report(_states("parsenet"))
    assert only_parser.can_capture
    assert only_parser.can_generate
    assert not only_parser.complete
    assert only_parser.summary() == "parsenet missing (optional)"
    assert "background" in only_parser.cost(only_parser.missing_optional[0])
    no_adapter = models_report(_states("wplus-adapter", "parsenet"))
    assert no_adapter.can_capture
    assert not no_adapter.can_generate
    assert [m.id for m in no_adapter.missing_required] == ["wplus-adapter"]
    assert no_adapter.summary() == "⚠ wplus-adapter missing · parsenet missing (optional)"
    assert any(w.startswith("capture") for w in no_adapter.works_now())
    assert not any(w.startswith("generation") for w in no_adapter.works_now())
    assert not models_report(None).checked
    broken = models_report(OSError("no manifest"))
    assert not broken.can_generate
    assert "no manifest" in broken.problem


def test_the_manifest_marks_only_what_capture_and_generation_need_as_required():
    import tomllib

    entries = tomllib.loads((REPO / "resources" / "models.toml").read_text("utf-8"))["model"]
    required = {e["role"] for e in entries if e.get("required")}
    assert required == {"sd15", "adapter", "e4e", "landmarks"}  # the parser only whitens the background


class DictStore(dict):
    def value(self, key, default=None):
        return self.get(key, default)

    def setValue(self, key, value):
        self[key] = value


class Camera:
    def __init__(self, frames) -> None:
        self.frames = list(frames)
        self.running = True

    def latest_frame(self):
        return self.frames[0] if self.frames else None


def test_consent_is_asked_once_and_a_refusal_captures_nothing(tmp_path):
    studio, client, timers = _studio(tmp_path)
    asked: list = []
    store = DictStore()
    gate = ConsentGate(store, ask=asked.append)
    frame = np.zeros((8, 8, 3), np.uint8)
    cap = CaptureController(studio, client, Camera([frame]), gate, timers)
    assert cap.capture()
    assert len(asked) == 1
    assert gate.asking
    assert client.encodes == []
    asked[0](False)
    assert client.encodes == []
    assert not gate.accepted
    cap.capture()
    asked[1](True)
    assert store["consent/accepted"] == "true"
    assert [e[0] for e in client.encodes] == ["one"]
    cap.capture()  # remembered: no second question
    assert len(asked) == 2
    assert len(client.encodes) == 2


def test_burst_collects_distinct_frames_then_encodes_once(tmp_path):
    studio, client, timers = _studio(tmp_path)
    cam = Camera([])
    cap = CaptureController(studio, client, cam, ConsentGate(DictStore({"consent/accepted": "true"})), timers,
                            burst_frames=3)
    assert cap.burst()
    assert cap.bursting
    tick = timers.made[-1]
    for k in range(5):
        cam.frames = [np.full((4, 4, 3), k, np.uint8)]
        tick.fire()
        tick.fire()  # the same frame twice counts once
        if not cap.bursting:
            break
    assert not cap.bursting
    kind, frames, _ = client.encodes[-1]
    assert kind == "burst"
    assert [int(f[0, 0, 0]) for f in frames] == [0, 1, 2]
    cam.running = False
    statuses: list[str] = []
    cap.status.connect(statuses.append)
    assert not cap.burst()
    assert statuses == ["Start the camera to capture a burst."]


def test_open_path_routes_pngs_to_restore_and_photos_to_capture(tmp_path, monkeypatch):
    studio, client, timers = _studio(tmp_path)
    cap = CaptureController(studio, client, Camera([]), ConsentGate(DictStore({"consent/accepted": "true"})), timers)
    monkeypatch.chdir(tmp_path)
    assert cap.open_path("result.png")
    assert client.reads == [str(tmp_path / "result.png")]  # relative to the current directory
    cap.on_request_failed(str(tmp_path / "result.png"), None)  # a PNG without our settings: a photo
    assert client.loads == [str(tmp_path / "result.png")]
    assert cap.open_path("photo.JPG")
    assert client.loads[-1] == str(tmp_path / "photo.JPG")
    shown: list = []
    cap.still_shown.connect(shown.append)
    cap.on_image_loaded(str(tmp_path / "photo.JPG"), np.zeros((8, 8, 3), np.uint8))
    assert len(shown) == 1
    assert client.encodes[-1][2] == "photo"
    assert not cap.open_path("notes.txt")
