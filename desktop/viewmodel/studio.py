"""The studio's state and flow: identity, edits, settings, results, history — no widgets.

It turns GUI intents (generate, move a slider, capture, restore a PNG) into immutable requests for
the bridge, and turns the bridge's signals back into what the views show, keeping only the newest
result (generation numbers) so a stale render can never replace a newer one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

from desktop.engine_client import EngineClient, FailureInfo
from desktop.imaging import thumbnail
from desktop.viewmodel.controls import ControlsModel
from desktop.viewmodel.edits import EditHistory
from desktop.viewmodel.generation import GenerationSettings, GenerationState
from desktop.viewmodel.identities import IdentityEntry, IdentityLibrary, mix_identities
from desktop.viewmodel.throttle import Throttle
from engine.api import EditState, GenerateRequest, Identity, ModelState, ModelStatus, Progress, Result

log = logging.getLogger(__name__)

# StyleGAN2 face preview levels. The identity's own face (after capture, on selection, on restore) is
# the exact e4e reconstruction: that is where the user asks "is this me?". While a slider is dragged the
# preview uses the reduced 128² level (that level's RGB skip): bench/preview.py, 2-vCPU AMD EPYC, torch
# 2.13 CPU, idle, 2026-11-27: 64² 0.20 s, 128² 0.37 s, reduced 256² 0.57 s, exact 256² 1.54 s a frame.
# 128² matches the ≈165 px preview tile, so edits such as glasses or a smile stay visible; 64² would be
# upscaled 2.6× into a blur. When the slider is let go the reduced 256² level follows (exact again once
# every slider is back at zero).
EXACT_PREVIEW_SIZE = 256
DRAG_PREVIEW_SIZE = 128
SETTLED_PREVIEW_SIZE = 256
PREVIEW_CAPTIONS = {"exact": "e4e reconstruction", "exact_edited": "e4e · edited", "drag": "edited · draft 128²",
                    "settled": "edited · reduced 256²"}


@dataclass(frozen=True, eq=False)
class HistoryEntry:
    """One generated image with everything needed to restore its state."""

    gen: int
    result: Result
    index: int
    thumb: np.ndarray
    identity_id: str = ""
    likeness: list[float] = field(default_factory=list)  # filled later (list: the entry stays frozen)

    @property
    def image(self) -> np.ndarray:
        return self.result.images[self.index]

    @property
    def request(self) -> GenerateRequest:
        return self.result.request

    @property
    def seed(self) -> int:
        return self.result.seeds[self.index] if self.index < len(self.result.seeds) else self.request.seed


def models_ready(states: Any) -> bool:
    """True when every required model is present and not corrupt."""
    if not isinstance(states, tuple):
        return False
    return all(s.status in (ModelStatus.OK, ModelStatus.UNVERIFIED) for s in states if s.required)


class StudioState(QObject):
    """Connects the view models to the engine bridge."""

    identity_changed = Signal(object)  # IdentityEntry | None
    face_preview_changed = Signal(object)  # uint8 RGB
    face_preview_caption = Signal(str)  # what the preview shows (PREVIEW_CAPTIONS), emitted before the image
    result_shown = Signal(object)  # HistoryEntry | None (live results come as a transient entry)
    step_preview = Signal(object)  # uint8 RGB
    progress_changed = Signal(object)  # Progress | None
    likeness_changed = Signal(object)  # float | None
    history_changed = Signal()
    busy_changed = Signal(bool)
    encoding_changed = Signal(bool)
    error = Signal(object)  # FailureInfo
    models_changed = Signal(object)  # tuple[ModelState, ...] | Exception
    catalog_changed = Signal(object)  # tuple[SliderSpec, ...]
    timings_changed = Signal(object)  # Mapping[str, float]
    status_message = Signal(str)
    ab_changed = Signal(bool)

    def __init__(self, client: EngineClient, library: IdentityLibrary, edits: EditHistory,
                 generation: GenerationState, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.library = library
        self.edits = edits
        self.generation = generation
        self.identity: IdentityEntry | None = None
        self.controls: ControlsModel | None = None  # ControlNets and LoRAs (set by the controls panel)
        self.history: list[HistoryEntry] = []
        self.shown: HistoryEntry | None = None
        self.previous: HistoryEntry | None = None
        self.showing_b = False
        self.model_states: Any = None
        self.catalog: tuple = ()
        self.results_shown = 0
        self.stale_dropped = 0
        self._newest_shown = 0
        self._newest_render = 0
        self._newest_preview = 0
        self._preview_kinds: dict[int, str] = {}
        self._dragging = False
        self._encodes: set[int] = set()
        self._pending_name: dict[int, str] = {}
        self._preview_throttle = Throttle(self._send_preview, 33, self)
        self._live_throttle = Throttle(lambda: self._send_render(live=True), 80, self)
        self._final_timer = QTimer(self)
        self._final_timer.setSingleShot(True)
        self._final_timer.setInterval(350)
        self._final_timer.timeout.connect(lambda: self._send_render(live=False))

        client.result_ready.connect(self._on_result)
        client.progress.connect(self._on_progress)
        client.cancelled.connect(self._on_cancelled)
        client.failed.connect(self._on_failed)
        client.busy_changed.connect(self._on_busy)
        client.face_preview_ready.connect(self._on_face_preview)
        client.identity_ready.connect(self._on_identity)
        client.burst_ready.connect(self._on_burst)
        client.likeness_ready.connect(self._on_likeness)
        client.models_checked.connect(self._on_models)
        client.catalog_ready.connect(self._on_catalog)
        edits.changed.connect(self._on_edits_changed)
        generation.changed.connect(self._on_settings_changed)

    # -- properties -----------------------------------------------------------------------------
    @property
    def models_ok(self) -> bool:
        return models_ready(self.model_states)

    @property
    def newest_render_gen(self) -> int:
        return self._newest_render

    def missing_models(self) -> list[ModelState]:
        if not isinstance(self.model_states, tuple):
            return []
        return [s for s in self.model_states if s.required and s.status in (ModelStatus.MISSING, ModelStatus.CORRUPT)]

    # -- identities -----------------------------------------------------------------------------
    def select_identity(self, identity_id: str | None) -> None:
        entry = self.library.get(identity_id) if identity_id else None
        self._set_identity(entry)

    def _set_identity(self, entry: IdentityEntry | None) -> None:
        self.identity = entry
        self.identity_changed.emit(entry)
        if entry is not None:
            self._dragging = False
            self._request_preview("exact")
            if self.generation.settings.live:
                self._final_timer.start()

    def capture(self, frame: np.ndarray, name: str = "") -> int:
        """Encode a camera frame or photo into a new identity (reported by `identity_changed`)."""
        gen = self.client.encode(frame, name=name)
        self._encodes.add(gen)
        self.encoding_changed.emit(True)
        self.status_message.emit("Encoding the face…")
        return gen

    def capture_burst(self, frames: list[np.ndarray], name: str = "") -> int:
        gen = self.client.encode_burst(frames, name=name)
        self._encodes.add(gen)
        self.encoding_changed.emit(True)
        self.status_message.emit(f"Encoding a burst of {len(frames)} frames…")
        return gen

    def mix(self, a_id: str, b_id: str, t: float, *, persist: bool = True) -> IdentityEntry | None:
        a, b = self.library.get(a_id), self.library.get(b_id)
        if a is None or b is None:
            return None
        entry = self.library.add(mix_identities(a.identity, b.identity, t), persist=persist)
        self._set_identity(entry)
        return entry

    def _on_identity(self, gen: int, identity: Identity) -> None:
        self._finish_encode(gen)
        entry = self.library.add(identity)
        self.status_message.emit(f"Captured {entry.identity.name}.")
        self._set_identity(entry)

    def _on_burst(self, gen: int, burst: Any) -> None:
        self._finish_encode(gen)
        entry = self.library.add(burst.identity)
        dropped = len(burst.dropped)
        self.status_message.emit(f"Captured {entry.identity.name} from {burst.used} frames"
                                 + (f" ({dropped} dropped)." if dropped else "."))
        self._set_identity(entry)

    def _finish_encode(self, gen: int) -> None:
        self._encodes.discard(gen)
        self.encoding_changed.emit(bool(self._encodes))

    # -- generation -----------------------------------------------------------------------------
    def current_request(self, *, live: bool = False) -> GenerateRequest:
        ident = self.identity.identity if self.identity else None
        request = self.generation.settings.request(
            wplus=None if ident is None else ident.wplus, edits=self.edits.state,
            identity_name="" if ident is None else ident.name, live=live)
        return request if self.controls is None else self.controls.apply(request)

    def generate(self) -> int:
        """Render at full quality now (a new seed first unless the seed is locked)."""
        self._final_timer.stop()
        self._live_throttle.cancel()
        if not self.generation.settings.seed_locked:
            self.generation.blockSignals(True)
            self.generation.new_seed()
            self.generation.blockSignals(False)
            self.generation.changed.emit(self.generation.settings, "seed")
        return self._send_render(live=False)

    def _send_render(self, *, live: bool) -> int:
        try:
            request = self.current_request(live=live)
        except Exception as exc:
            self.error.emit(FailureInfo.from_exception("settings", exc))
            return 0
        face = self.identity.identity.aligned_face if self.identity else None
        gen = self.client.submit_render(request, live=live, identity_face=face)
        self._newest_render = gen
        return gen

    def cancel(self) -> None:
        self._final_timer.stop()
        self._live_throttle.cancel()
        self.client.cancel()

    def set_live(self, live: bool) -> None:
        self.generation.update(live=live)

    def _on_edits_changed(self, state: EditState, transient: bool) -> None:
        if self.identity is not None:
            self._dragging = transient
            self._preview_throttle.poke()
            if not transient:
                self._preview_throttle.flush()
        if self.generation.settings.live:
            if transient:
                self._final_timer.stop()
                self._live_throttle.poke()
            else:
                self._live_throttle.cancel()
                self._final_timer.stop()
                self._send_render(live=False)

    def _on_settings_changed(self, settings: GenerationSettings, what: str) -> None:
        if what in ("live", "seed_locked", "live_steps") or not settings.live:
            return
        self._live_throttle.poke()
        self._final_timer.start()

    def controls_changed(self) -> None:
        """A ControlNet or LoRA setting changed (not a generation setting): live mode re-renders too."""
        self._on_settings_changed(self.generation.settings, "controls")

    def _send_preview(self) -> None:
        if self.identity is None:
            return
        if self._dragging:
            self._request_preview("drag")
        else:
            self._request_preview("exact" if self.edits.state.is_identity else "settled")

    def _request_preview(self, kind: str) -> int:
        """Queue the identity's face preview: "exact" (reconstruction), "drag" (128²) or "settled" (256²)."""
        assert self.identity is not None
        size = {"exact": EXACT_PREVIEW_SIZE, "drag": DRAG_PREVIEW_SIZE, "settled": SETTLED_PREVIEW_SIZE}[kind]
        gen = self.client.submit_preview(self.identity.identity.wplus, self.edits.state, size, exact=kind == "exact")
        self._newest_preview = gen
        self._preview_kinds = {g: k for g, k in self._preview_kinds.items() if g >= gen - 64}
        if kind == "exact" and not self.edits.state.is_identity:
            kind = "exact_edited"
        self._preview_kinds[gen] = kind
        return gen

    # -- results --------------------------------------------------------------------------------
    def _on_result(self, gen: int, result: Result, live: int) -> None:
        if gen <= self._newest_shown:
            self.stale_dropped += 1
            log.debug("dropping stale result %d (showing %d)", gen, self._newest_shown)
            return
        self._newest_shown = gen
        self.results_shown += 1
        ident_id = self.identity.identity.id if self.identity else ""
        entries = [HistoryEntry(gen, result, i, thumbnail(img, 96), ident_id) for i, img in enumerate(result.images)]
        if not live:
            self.history.extend(entries)
            self.history_changed.emit()
        self._show(entries[0] if entries else None)
        if gen >= self._newest_render:
            self.progress_changed.emit(None)
        self.timings_changed.emit(dict(result.timings))

    def _show(self, entry: HistoryEntry | None) -> None:
        if self.shown is not None and entry is not None and self.shown.result is not entry.result:
            self.previous = self.shown
        self.shown = entry
        if self.showing_b:
            self.showing_b = False
            self.ab_changed.emit(False)
        self.result_shown.emit(entry)
        self.likeness_changed.emit(entry.likeness[0] if entry and entry.likeness else None)

    def show_history(self, index: int, *, restore: bool = True) -> None:
        """Show a history entry and (by default) restore its full state."""
        if not (0 <= index < len(self.history)):
            return
        entry = self.history[index]
        if restore:
            self.restore_request(entry.result.request, seed=entry.seed)
        self._show(entry)

    def toggle_ab(self, show_b: bool | None = None) -> None:
        """Show the previous result in place of the current one (and back)."""
        if self.previous is None:
            return
        self.showing_b = (not self.showing_b) if show_b is None else show_b
        self.result_shown.emit(self.previous if self.showing_b else self.shown)
        self.ab_changed.emit(self.showing_b)

    def _on_progress(self, gen: int, p: Progress) -> None:
        if gen < self._newest_render:
            return
        self.progress_changed.emit(p)
        if p.preview is not None:
            self.step_preview.emit(p.preview)

    def _on_cancelled(self, gen: int) -> None:
        if gen >= self._newest_render:
            self.progress_changed.emit(None)
            self.status_message.emit("Cancelled.")

    def _on_busy(self, busy: int) -> None:
        busy = bool(busy)
        self.busy_changed.emit(busy)
        if not busy:
            self.progress_changed.emit(None)

    def _on_failed(self, gen: int, info: FailureInfo) -> None:
        if gen in self._encodes:
            self._finish_encode(gen)
        self.error.emit(info)

    def _on_face_preview(self, gen: int, image: np.ndarray) -> None:
        if gen >= self._newest_preview:
            kind = self._preview_kinds.get(gen, "settled")
            self.face_preview_caption.emit(PREVIEW_CAPTIONS[kind])
            self.face_preview_changed.emit(image)

    def _on_likeness(self, gen: int, value: float) -> None:
        for e in self.history:
            if e.gen == gen and not e.likeness:
                e.likeness.append(value)
        if self.shown is not None and self.shown.gen == gen:
            self.likeness_changed.emit(value)

    def _on_models(self, states: Any) -> None:
        self.model_states = states
        self.models_changed.emit(states)

    def _on_catalog(self, catalog: tuple) -> None:
        self.catalog = catalog
        self.catalog_changed.emit(catalog)

    # -- restore and save -----------------------------------------------------------------------
    def restore_request(self, request: GenerateRequest, *, seed: int | None = None, source: str = "") -> None:
        """Put back the full state of a request: settings, edits, identity."""
        settings = GenerationSettings.from_request(request, self.generation.settings)
        if seed is not None:
            from dataclasses import replace

            settings = replace(settings, seed=seed)
        self.generation.blockSignals(True)
        self.generation.set_all(settings)
        self.generation.blockSignals(False)
        self.generation.changed.emit(settings, "*restore")
        if request.wplus is not None:
            entry = self.library.find_wplus(request.wplus)
            if entry is None:
                entry = self.library.add(Identity(id="", name=request.identity_name or "Restored identity",
                                                  wplus=request.wplus, source=source or "restored"), persist=False)
            if self.identity is None or entry.identity.id != self.identity.identity.id:
                self.identity = entry
                self.identity_changed.emit(entry)
        if self.controls is not None:
            self.controls.restore(request)
        # Edits last so the preview follows the restored identity.
        self.edits.set_state(request.edits)
        if self.identity is not None:
            self._dragging = False
            self._request_preview("exact")
        if source:
            self.status_message.emit(f"Restored the settings of {Path(source).name}.")

    def save_shown(self, path: str | Path) -> bool:
        entry = self.shown
        if entry is None:
            return False
        self.client.save_png(path, entry.image, entry.result, entry.index)
        return True

    def save_all(self, folder: str | Path) -> int:
        folder = Path(folder)
        for k, entry in enumerate(self.history):
            self.client.save_png(folder / f"wplus_{k + 1:03d}_seed{entry.seed}.png", entry.image, entry.result,
                                 entry.index)
        return len(self.history)
