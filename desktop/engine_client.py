"""The one bridge between the GUI and the engine.

Owns the inference worker thread (all engine calls happen there, so GPU contexts stay on one thread),
the latest-wins mailbox that feeds it, a small I/O thread for saving and reading PNGs, and the Qt
signals that carry results back. Results are emitted from worker threads and therefore reach widgets
through queued connections only; the GUI thread never waits on inference.

This is the only desktop module that may import the engine's heavy parts (`engine.session`, the face
tracker, the capture back-ends, the PNG metadata; lazily, off the GUI thread where they are slow), and
the only place where a fake session may be injected (`session_factory`). The import-linter contract
"The desktop reaches the heavy runtimes only through the bridge" (pyproject.toml) holds everyone else to it.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from desktop.viewmodel.reports import BackendOption, FailureInfo
from engine.api import EditState, EngineSession, GenerateRequest, Identity, ModelState, Progress
from engine.cancel import CancelToken
from engine.coalesce import CLOSED, Mailbox
from engine.config import EngineConfig
from engine.errors import Cancelled

log = logging.getLogger(__name__)

SessionFactory = Callable[[EngineConfig], EngineSession]

# A running live job is never cancelled by a newer live job (the newer one waits, coalesced, in the
# latest-wins slot), so continuous dragging shows a frame per render time. A full-quality request
# cancels a running job unless it is a live one past this share of its steps.
FINISH_FRACTION = 0.7


def real_session_factory(config: EngineConfig) -> EngineSession:
    """Open the real engine session (imports torch; call on the worker thread only)."""
    from engine.session import Session

    return Session(config)


@dataclass(frozen=True)
class RenderJob:
    gen: int
    request: GenerateRequest
    live: bool = False
    identity_face: np.ndarray | None = field(default=None, compare=False)
    token: CancelToken = field(default_factory=CancelToken, compare=False)


@dataclass(frozen=True)
class PreviewJob:
    gen: int
    wplus: np.ndarray
    edits: EditState
    size: int = 256
    exact: bool = False  # the official reconstruction (full image) instead of the reduced path


@dataclass(frozen=True)
class _CheckModels:
    verify: bool
    token: CancelToken


@dataclass(frozen=True)
class _Open:
    config: EngineConfig


@dataclass(frozen=True)
class _Encode:
    gen: int
    images: tuple[np.ndarray, ...]
    name: str
    aligned: bool
    burst: bool
    restore: bool = False  # PSFRGAN before e4e (single images only)


@dataclass(frozen=True)
class _Call:
    """Run `fn(session)` on the worker and emit `call_done(tag, value)` (small one-off queries)."""

    tag: str
    fn: Callable[[EngineSession], Any]


class EngineClient(QObject):
    """Feeds one inference worker through latest-wins slots and reports back through signals.

    Args:
        config: the engine configuration of the first session.
        session_factory: builds the session on the worker thread (tests inject a fake here).
        metadata: module-like object with `save_png(path, image, result, index)` and
            `read_request(path)`; default `engine.pipeline.metadata`, imported lazily.
    """

    state_changed = Signal(str)  # "starting", "ready", "failed", "closed"
    models_checked = Signal(object)  # tuple[ModelState, ...] | Exception
    models_progress = Signal(object)  # Progress while model files are hashed (Verify), None when done
    catalog_ready = Signal(object)  # tuple[SliderSpec, ...]
    progress = Signal(int, object)  # gen, Progress
    # Flags cross threads as ints: PySide6 6.12 on Python 3.11 loses references to True/False when a
    # bool travels through a queued connection ("bool_dealloc" at exit), so no bool in these signals.
    result_ready = Signal(int, object, int)  # gen, Result, live (0/1)
    likeness_ready = Signal(int, float)
    face_preview_ready = Signal(int, object)  # gen, uint8 RGB
    identity_ready = Signal(int, object)  # gen, Identity
    burst_ready = Signal(int, object)  # gen, BurstResult
    cancelled = Signal(int)
    failed = Signal(int, object)  # gen (0: not a job), FailureInfo
    busy_changed = Signal(int)  # 0/1
    backends_ready = Signal(object)  # tuple[BackendOption, ...]
    saved = Signal(str)
    request_loaded = Signal(str, object)  # path, GenerateRequest
    request_failed = Signal(str, object)  # path, FailureInfo (not one of our PNGs, or unreadable)
    image_loaded = Signal(str, object)  # path, uint8 RGB
    call_done = Signal(str, object)
    device_resolved = Signal(str)  # "cpu" or "cuda": where this session renders

    def __init__(
        self,
        config: EngineConfig,
        session_factory: SessionFactory | None = None,
        metadata: Any = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._config = config
        self._factory = session_factory or real_session_factory
        self._metadata = metadata
        self._gens = itertools.count(1)
        self._box = Mailbox(["preview", "render"])
        self._lock = threading.Lock()
        self._inflight: RenderJob | None = None
        self._inflight_fraction = 0.0
        self._busy = False
        self._session: EngineSession | None = None
        self.render_calls = 0  # renders started on the worker (for tests and the bench)
        self.preview_calls = 0
        self._io: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="wplus-inference", daemon=True)
        self._io_thread = threading.Thread(target=self._run_io, name="wplus-io", daemon=True)
        self._started = False
        self._closed = False
        self._verify_token = CancelToken()

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def config(self) -> EngineConfig:
        return self._config

    def start(self) -> None:
        """Start the threads and open the session (models are checked, the catalog is loaded)."""
        if self._started:
            return
        self._started = True
        self._worker.start()
        self._io_thread.start()
        self._box.send(_Open(self._config))

    def reopen(self, config: EngineConfig) -> None:
        """Close the session and open a new one with `config` (another models folder or backend)."""
        self._config = config
        self.cancel()
        self._box.send(_Open(config))

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what runs, send the sentinel, join the threads. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        self._verify_token.cancel()
        self._box.close()
        self._io.put(None)
        if self._started:
            self._worker.join(timeout)
            self._io_thread.join(timeout)
            if self._worker.is_alive():
                log.warning("the inference worker did not stop within %.1f s", timeout)

    # -- requests from the GUI thread -----------------------------------------------------------
    def next_gen(self) -> int:
        return next(self._gens)

    def submit_render(self, request: GenerateRequest, *, live: bool = False,
                      identity_face: np.ndarray | None = None) -> int:
        """Queue a render (latest wins) and return its generation number.

        A newer live request lets a running live render finish (so dragging shows frames); any other
        combination cancels the running render, except a live one past `FINISH_FRACTION` of its steps.
        """
        gen = self.next_gen()
        job = RenderJob(gen, request, live, identity_face)
        with self._lock:
            running = self._inflight
            keep = running is not None and running.live and (live or self._inflight_fraction >= FINISH_FRACTION)
            if running is not None and not keep:
                running.token.cancel()
            self._set_busy(True)
        old = self._box.put("render", job)
        if old is not None:
            self.cancelled.emit(old.gen)
        return gen

    def submit_preview(self, wplus: np.ndarray, edits: EditState, size: int = 256, *, exact: bool = False) -> int:
        """Queue a StyleGAN2 face preview (latest wins); served between denoising steps too.

        Args:
            wplus: the identity's W+.
            edits: slider values to apply.
            size: 64/128/256 (reduced paths unless `exact`) or 512/1024.
            exact: the official reconstruction (full 1024² image resized; ≈3× the reduced 256² CPU time).
        """
        gen = self.next_gen()
        self._box.put("preview", PreviewJob(gen, wplus, edits, size, exact))
        return gen

    def encode(self, image: np.ndarray, *, name: str = "", aligned: bool = False, restore: bool = False) -> int:
        gen = self.next_gen()
        self._box.send(_Encode(gen, (image,), name, aligned, burst=False, restore=restore))
        return gen

    def encode_burst(self, images: Sequence[np.ndarray], *, name: str = "") -> int:
        gen = self.next_gen()
        self._box.send(_Encode(gen, tuple(images), name, False, burst=True))
        return gen

    def call(self, tag: str, fn: Callable[[EngineSession], Any]) -> None:
        """Run a small query on the worker; the answer comes back as `call_done(tag, value)`."""
        self._box.send(_Call(tag, fn))

    def check_models(self, verify: bool = False) -> None:
        """Check the models folder again; `models_checked(states)` reports.

        Args:
            verify: hash the files that were not hashed before (reads each once; `models_progress`
                reports the bytes). Without it the check is instant (presence, size, structure).
        """
        self._verify_token.cancel()
        self._verify_token = CancelToken()
        self._box.send(_CheckModels(bool(verify), self._verify_token))

    def probe_backends(self) -> None:
        self._io.put(self._probe_backends)

    def cancel(self) -> None:
        """Cancel the running render and drop the pending one."""
        old = self._box.clear("render") if not self._box.closed else None
        if old is not None:
            self.cancelled.emit(old.gen)
        with self._lock:
            if self._inflight is not None:
                self._inflight.token.cancel()
            elif old is not None:
                self._set_busy(False)

    def save_png(self, path: str | Path, image: np.ndarray, result: Any, index: int) -> None:
        """Write `image` with the result's metadata on the I/O thread; `saved(path)` reports it."""

        def job() -> None:
            self._meta().save_png(Path(path), image, result, index)
            self.saved.emit(str(path))

        self._io.put(self._guard("save", job))

    def read_request(self, path: str | Path) -> None:
        """Read the settings stored in one of our PNGs; `request_loaded(path, request)` reports them."""

        def job() -> None:
            try:
                req = self._meta().read_request(Path(path))
            except Exception as exc:
                log.info("no settings in %s: %s", path, exc)
                self.request_failed.emit(str(path), FailureInfo.from_exception("load", exc))
                return
            self.request_loaded.emit(str(path), req)

        self._io.put(job)

    def load_image(self, path: str | Path) -> None:
        """Decode a photo on the I/O thread; `image_loaded(path, rgb)` reports it."""

        def job() -> None:
            # the engine's decoder: the same pixels (and the same limits) as `wplus encode`
            from engine.images import load_image

            self.image_loaded.emit(str(path), load_image(path))

        self._io.put(self._guard("open", job))

    @property
    def busy(self) -> bool:
        return self._busy

    # -- worker side ----------------------------------------------------------------------------
    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busy_changed.emit(int(busy))

    def _meta(self) -> Any:
        if self._metadata is None:
            from engine.pipeline import metadata

            self._metadata = metadata
        return self._metadata

    def _guard(self, where: str, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # thread top: report, never die
                log.exception("%s failed", where)
                self.failed.emit(0, FailureInfo.from_exception(where, exc))

        return run

    def _run_io(self) -> None:
        while True:
            job = self._io.get()
            if job is None:
                return
            job()

    def _run(self) -> None:
        try:
            while True:
                d = self._box.take()
                if d is CLOSED:
                    break
                if d is None:
                    continue
                try:
                    self._dispatch(d.channel, d.item)
                except Exception as exc:  # thread top: report and keep serving
                    log.exception("worker job failed")
                    gen = getattr(d.item, "gen", 0)
                    self.failed.emit(gen, FailureInfo.from_exception(d.channel, exc))
        finally:
            if self._session is not None:
                try:
                    self._session.close()
                except Exception:
                    log.exception("closing the session failed")
            self.state_changed.emit("closed")

    def _dispatch(self, channel: str, item: Any) -> None:
        if isinstance(item, _Open):
            self._open(item.config)
        elif isinstance(item, RenderJob):
            self._render(item)
        elif isinstance(item, PreviewJob):
            self._preview(item)
        elif isinstance(item, _Encode):
            self._encode(item)
        elif isinstance(item, _CheckModels):
            self._check_models(item)
        elif isinstance(item, _Call):
            self.call_done.emit(item.tag, item.fn(self._need_session()))
        else:  # pragma: no cover - programming error
            raise TypeError(f"unknown job on {channel}: {item!r}")

    def _need_session(self) -> EngineSession:
        if self._session is None:
            self._open(self._config)
        assert self._session is not None
        return self._session

    def _open(self, config: EngineConfig) -> None:
        self.state_changed.emit("starting")
        if self._session is not None:
            self._session.close()
            self._session = None
        t0 = time.perf_counter()
        self._session = self._factory(config)
        log.info("engine session opened in %.2f s (models: %s)", time.perf_counter() - t0, config.models_dir)
        try:
            # no hashing at start-up: several GB would keep the engine busy for a minute (Verify does it)
            states: tuple[ModelState, ...] | Exception = tuple(self._session.model_states(verify=False))
        except Exception as exc:  # the manifest may be absent or unreadable: the app keeps working
            log.exception("checking the models failed")
            states = exc
        self.models_checked.emit(states)
        self.device_resolved.emit(resolved_device(self._session, config))
        try:
            self.catalog_ready.emit(tuple(self._session.catalog()))
        except Exception as exc:
            log.exception("loading the edit catalog failed")
            self.failed.emit(0, FailureInfo.from_exception("catalog", exc))
            self.catalog_ready.emit(())
        self.state_changed.emit("ready")

    def _check_models(self, job: _CheckModels) -> None:
        session = self._need_session()
        last = [0.0]

        def on_progress(p: Progress) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.1 or p.step >= p.total:  # ≤ 10 updates a second
                last[0] = now
                self.models_progress.emit(p)

        try:
            states: tuple[ModelState, ...] | Exception = tuple(
                session.model_states(verify=job.verify, token=job.token, progress=on_progress if job.verify else None))
        except Cancelled:
            log.info("model verification cancelled")
            self.models_progress.emit(None)
            return
        except Exception as exc:
            log.exception("checking the models failed")
            states = exc
        self.models_progress.emit(None)
        self.models_checked.emit(states)

    def _preview(self, job: PreviewJob) -> None:
        session = self._need_session()
        self.preview_calls += 1
        try:
            image = session.preview_face(job.wplus, job.edits, job.size, exact=job.exact)
        except Exception as exc:
            self.failed.emit(job.gen, FailureInfo.from_exception("preview", exc))
            return
        self.face_preview_ready.emit(job.gen, image)

    def _render(self, job: RenderJob) -> None:
        session = self._need_session()
        with self._lock:
            if job.token.cancelled:
                self.cancelled.emit(job.gen)
                self._set_busy(self._box.pending("render"))
                return
            self._inflight = job
            self._inflight_fraction = 0.0
        self.render_calls += 1

        def on_progress(p: Progress) -> None:
            with self._lock:
                self._inflight_fraction = p.fraction
            self.progress.emit(job.gen, p)
            # Serve face previews between denoising steps so the StyleGAN preview stays live.
            d = self._box.take_nowait("preview")
            if d is not None:
                self._preview(d.item)

        try:
            result = session.render(job.request, job.token, on_progress)
        except Cancelled:
            self.cancelled.emit(job.gen)
            result = None
        except Exception as exc:
            log.exception("render %d failed", job.gen)
            self.failed.emit(job.gen, FailureInfo.from_exception("render", exc))
            result = None
        finally:
            with self._lock:
                self._inflight = None
                self._set_busy(self._box.pending("render"))
        if result is None:
            return
        self.result_ready.emit(job.gen, result, int(job.live))
        if job.identity_face is not None and result.images and not job.live:
            try:
                self.likeness_ready.emit(job.gen, float(session.likeness(job.identity_face, result.images[0])))
            except Exception:
                log.warning("likeness unavailable", exc_info=True)

    def _encode(self, job: _Encode) -> None:
        session = self._need_session()
        try:
            if job.burst:
                self.burst_ready.emit(job.gen, session.encode_burst(list(job.images), name=job.name))
            else:
                ident: Identity = session.encode_identity(job.images[0], name=job.name, aligned=job.aligned,
                                                          restore=job.restore)
                self.identity_ready.emit(job.gen, ident)
        except Exception as exc:
            self.failed.emit(job.gen, FailureInfo.from_exception("encode", exc))

    def _probe_backends(self) -> None:
        options = probe_backends()  # may import torch: seconds on a loaded machine
        if self._closed:  # the app quit meanwhile: nobody listens, and the QObject may be gone
            return
        try:
            self.backends_ready.emit(options)
        except RuntimeError:  # deleted between the check and the emit
            log.info("backend probe finished after the app closed")


def probe_backends() -> tuple[BackendOption, ...]:
    """What backends and devices this machine offers, with the reason when one is not usable.

    Asks `engine.backends.select.probe()` (it knows about CUDA, ONNX Runtime providers and TensorRT;
    it may import torch, so call it off the GUI thread); without it, only checks which runtimes are
    installed, without importing them.
    """
    options = [BackendOption("backend", "auto", True, "the fastest backend that works here"),
               BackendOption("device", "auto", True, "CUDA when available, else CPU"),
               BackendOption("device", "cpu", True)]
    try:
        from engine.backends import select

        report = select.probe()
    except Exception as exc:
        log.warning("backend probe unavailable: %s", exc)
        report = None
    if report is not None:
        for st in report.statuses:
            options.append(BackendOption("backend", st.name, bool(st.available), str(st.reason)))
        gpu = report.gpu_name or "a CUDA GPU"
        options.append(BackendOption("device", "cuda", bool(report.cuda),
                                     f"uses {gpu}" if report.cuda else "no CUDA GPU or driver was found"))
        return tuple(options)
    for name, module in (("torch", "torch"), ("onnxruntime", "onnxruntime"), ("tensorrt", "tensorrt")):
        found = importlib.util.find_spec(module) is not None
        options.append(BackendOption("backend", name, found, "" if found else f"{module} is not installed"))
    options.append(BackendOption("device", "cuda", False, "CUDA detection is unavailable in this build"))
    return tuple(options)


def resolved_device(session: Any, config: EngineConfig) -> str:
    """"cuda" or "cpu": where `session` renders (a session may say so itself with a `device` attribute)."""
    told = getattr(session, "device", None)
    if isinstance(told, str) and told:
        return "cuda" if told.startswith("cuda") else "cpu"
    if config.device not in ("", "auto"):
        return "cuda" if config.device.startswith("cuda") else "cpu"
    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch  # on the worker thread: the session loads it for its first render anyway

    return "cuda" if torch.cuda.is_available() else "cpu"


def face_analysis() -> tuple[Any, Any]:
    """The engine's face tracker and quality modules (dlib; call off the GUI thread)."""
    from engine.faces import quality, track

    return track, quality


def capture_backend(kind: str) -> Any:
    """The engine's capture module for "webcam" or "files" (OpenCV; raises ImportError without it)."""
    if kind == "webcam":
        from engine.capture import webcam

        return webcam
    if kind == "files":
        from engine.capture import files

        return files
    raise ValueError(f"unknown capture backend {kind!r}")
