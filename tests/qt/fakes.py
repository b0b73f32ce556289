"""A fake engine session for the Qt tests, injected at the bridge (the only place fakes are allowed).

It honours the `engine.api.EngineSession` protocol faithfully: real numpy images, a progress call per
step with a preview, the cancel token checked at every step boundary (raising `Cancelled`), and it can
be made slow, gated (held before it starts a render, for deterministic thread control) or failing.
Images encode their request so tests can tell which request produced what is on screen: the red
channel is 10·(number of edits) + 100·edit sum mod 256, the green channel the seed mod 256.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.api import (
    BurstResult,
    EditKind,
    EditState,
    GenerateRequest,
    Identity,
    ModelState,
    ModelStatus,
    Progress,
    Result,
    SliderSpec,
    validate_wplus,
)
from engine.cancel import CancelToken
from engine.errors import Cancelled, FaceNotFound, ModelMissing

CATALOG = (
    SliderSpec("age", "Age", "age & gender", EditKind.INTERFACEGAN, -4.0, 4.0, 0.0, 0.1),
    SliderSpec("gender", "Gender", "age & gender", EditKind.LATENT_DIRECTION, -4.0, 4.0, 0.0, 0.1),
    SliderSpec("smile", "Smile", "expression", EditKind.INTERFACEGAN, -4.0, 4.0, 0.0, 0.1),
    SliderSpec("emotion_angry", "Angry", "expression", EditKind.LATENT_DIRECTION, -4.0, 4.0, 0.0, 0.1),
    SliderSpec("pose", "Head turn", "pose", EditKind.INTERFACEGAN, -4.0, 4.0, 0.0, 0.1),
    SliderSpec("glasses", "Glasses", "appearance", EditKind.LATENT_DIRECTION, -4.0, 4.0, 0.0, 0.1),
    SliderSpec("lipstick", "Lipstick", "appearance", EditKind.GANSPACE, -20.0, 20.0, 0.0, 0.5),
)

# (id, manifest role, required) as in resources/models.toml: the parser is optional
MODELS = (("sd15", "sd15", True), ("wplus_adapter", "adapter", True), ("e4e", "e4e", True),
          ("parsenet", "parser", False))


def request_marker(req: GenerateRequest) -> tuple[int, int]:
    """The (red, green) values the fake paints for `req`."""
    edits = req.edits.as_dict()
    red = round(10 * len(edits) + 100 * sum(edits.values())) % 256
    return red, req.seed % 256


class FakeSession:
    """Implements `EngineSession` with cheap numpy work and configurable timing.

    Args:
        step_delay: seconds slept per denoising step (realistic GPU: ~0.02–0.05).
        missing: names of required models reported missing.
        fail_render: an exception raised by every render (after the first step).
    """

    def __init__(self, step_delay: float = 0.0, missing: Sequence[str] = (), fail_render: Exception | None = None,
                 catalog: tuple[SliderSpec, ...] = CATALOG, preview_delay: float = 0.0) -> None:
        self.step_delay = step_delay
        self.device = "cpu"  # where the bridge says renders run (a test may say "cuda")
        self.preview_delay = preview_delay
        self.missing = set(missing)
        self.fail_render = fail_render
        self._catalog = catalog
        self.gate: threading.Event | None = None  # set by a test to hold renders before they start
        self.warnings: tuple[str, ...] = ()  # Result.warnings of every render (as the engine's, e.g. a fallback)
        self.started = threading.Event()
        self.lock = threading.Lock()
        self.renders_started: list[GenerateRequest] = []
        self.renders_finished: list[GenerateRequest] = []
        self.renders_cancelled: list[GenerateRequest] = []
        self.previews = 0
        self.preview_requests: list[tuple[int, bool]] = []  # (size, exact) of each preview rendered
        self.model_checks: list[bool] = []  # verify flag of each model_states call
        self.encodes = 0
        self.closed = False
        self.close_calls = 0
        self.thread_names: set[str] = set()

    # -- protocol -------------------------------------------------------------------------------
    def model_states(self, *, verify: bool = False, token: Any = None,
                     progress: Callable[[Progress], None] | None = None) -> tuple[ModelState, ...]:
        self._note()
        self.model_checks.append(verify)
        if verify and progress is not None:
            for mid, _role, _required in MODELS:  # "hashes" each file in two chunks, like engine.models.verify
                for done in (50, 100):
                    if token is not None:
                        token.raise_if_cancelled()
                    progress(Progress(f"checking {mid}/model.safetensors", done, 100))
        ok = ModelStatus.OK if verify else ModelStatus.UNVERIFIED
        return tuple(
            ModelState(mid, role, f"{mid}/model.safetensors", required,
                       ModelStatus.MISSING if mid in self.missing else ok,
                       licence="non-commercial" if mid != "sd15" else "CreativeML OpenRAIL-M")
            for mid, role, required in MODELS)

    def catalog(self) -> tuple[SliderSpec, ...]:
        return self._catalog

    def apply_edits(self, wplus: np.ndarray, edits: EditState) -> np.ndarray:
        w = validate_wplus(wplus).copy()
        for i, (_name, value) in enumerate(edits.values):
            w[0, :, i % 512] += value
        return w

    def encode_identity(self, image: np.ndarray, *, name: str = "", aligned: bool = False, face_index: int = 0,
                        restore: bool = False, token: Any = None,
                        progress: Callable[[Progress], None] | None = None) -> Identity:
        self._note()
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3:
            raise FaceNotFound("No face found in the image.", "Use a photo with one clearly visible face.")
        self.encodes += 1
        ys = np.linspace(0, img.shape[0] - 1, 512).astype(int)
        xs = np.linspace(0, img.shape[1] - 1, 512).astype(int)
        face = np.ascontiguousarray(img[ys][:, xs])
        rng = np.random.default_rng(int(img.mean() * 1000) % 2**32)
        return Identity(id="", name=name, wplus=rng.standard_normal((1, 18, 512)).astype(np.float32),
                        aligned_face=face, source="fake")

    def encode_burst(self, images: Sequence[np.ndarray], *, name: str = "", token: Any = None,
                     progress: Callable[[Progress], None] | None = None) -> BurstResult:
        ident = self.encode_identity(images[-1], name=name)
        return BurstResult(ident, used=len(images), dropped=())

    def render(self, request: GenerateRequest, token: Any = None,
               progress: Callable[[Progress], None] | None = None) -> Result:
        self._note()
        token = token or CancelToken()
        with self.lock:
            self.renders_started.append(request)
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        for m in self.missing:
            raise ModelMissing(f"The model {m} is missing.", "Open Models ▸ Models… to add it.")
        red, green = request_marker(request)
        t0 = time.perf_counter()
        try:
            for step in range(request.steps):
                token.raise_if_cancelled()
                if self.step_delay:
                    time.sleep(self.step_delay)
                if self.fail_render is not None:
                    raise self.fail_render
                if progress is not None:
                    preview = np.full((64, 64, 3), (step * 255 // max(1, request.steps), green, 90), np.uint8)
                    progress(Progress("denoise", step + 1, request.steps, time.perf_counter() - t0, preview))
            token.raise_if_cancelled()  # before the "VAE decode", as the real pipeline
        except Cancelled:
            with self.lock:
                self.renders_cancelled.append(request)
            raise
        images = tuple(np.full((request.height, request.width, 3), (red, (green + k) % 256, 60), np.uint8)
                       for k in range(request.n))
        with self.lock:
            self.renders_finished.append(request)
        total = time.perf_counter() - t0
        return Result(request, images, tuple(request.seed + k for k in range(request.n)),
                      timings={"total": total, "unet": total * 0.9}, warnings=self.warnings)

    def preview_face(self, wplus: np.ndarray, edits: EditState = EditState(), size: int = 256, *,
                     exact: bool = False) -> np.ndarray:
        self._note()
        if self.preview_delay:
            time.sleep(self.preview_delay)
        with self.lock:
            self.previews += 1
            self.preview_requests.append((size, exact))
        w = self.apply_edits(wplus, edits)
        v = int(abs(float(w.mean())) * 255) % 256
        return np.full((size, size, 3), (v, 128, 200), np.uint8)

    def likeness(self, face_a: np.ndarray, image_b: np.ndarray) -> float:
        return float(abs(float(np.mean(face_a)) - float(np.mean(image_b))) / 255.0)

    def close(self) -> None:
        self.closed = True
        self.close_calls += 1

    def _note(self) -> None:
        self.thread_names.add(threading.current_thread().name)
