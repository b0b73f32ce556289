"""The studio's state and flow: identity, edits, settings, results, history — no widgets, no Qt.

It turns GUI intents (generate, draft, refine, cancel, move a slider, capture, restore a PNG) into
immutable requests for the bridge, and turns the bridge's reports (delivered on the GUI thread by
`desktop.views.binding`) back into what the views show, keeping only the newest result (generation
numbers) so a stale render can never replace a newer one. Observers connect to its `Event`s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from desktop.viewmodel.controls import ControlsModel
from desktop.viewmodel.edits import EditHistory
from desktop.viewmodel.events import Event, TimerFactory
from desktop.viewmodel.generation import GenerationSettings, GenerationState, draft_request
from desktop.viewmodel.identities import IdentityEntry, IdentityLibrary, mix_identities
from desktop.viewmodel.models import ModelsReport, models_report
from desktop.viewmodel.pictures import thumbnail
from desktop.viewmodel.reports import FailureInfo
from desktop.viewmodel.throttle import Throttle
from engine.api import EditState, GenerateRequest, Identity, Progress, Result

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
    """One generated image with everything needed to restore its state.

    `draft_of` is set on a draft: the full-settings request that Refine renders (same seed and identity).
    """

    gen: int
    result: Result
    index: int
    thumb: np.ndarray
    identity_id: str = ""
    likeness: list[float] = field(default_factory=list)  # filled later (list: the entry stays frozen)
    draft_of: GenerateRequest | None = None

    @property
    def image(self) -> np.ndarray:
        return self.result.images[self.index]

    @property
    def request(self) -> GenerateRequest:
        return self.result.request

    @property
    def seed(self) -> int:
        return self.result.seeds[self.index] if self.index < len(self.result.seeds) else self.request.seed

    @property
    def is_draft(self) -> bool:
        return self.draft_of is not None


def describe_shown(entry: HistoryEntry | None) -> str:
    """The status bar's line about what the result area shows (draft or full render, and its settings)."""
    if entry is None:
        return ""
    r = entry.request
    what = f"{r.width}×{r.height}, {r.steps} steps, seed {entry.seed}"
    if entry.draft_of is not None:
        f = entry.draft_of
        return (f"Showing a draft ({what}). Refine renders the same picture at full settings "
                f"({f.width}×{f.height}, {f.steps} steps).")
    return f"Showing the full render ({what})."


class StudioState:
    """Connects the view models to the engine bridge.

    Args:
        client: the bridge (`desktop.engine_client.EngineClient`); only its request methods are called
            here: its reports arrive through the `on_*` methods (see `desktop.views.binding`).
        timer: makes single-shot timers (`desktop.views.binding.qt_timer` in the app; a manual one in tests).
        clock: monotonic seconds for the throttles.
    """

    def __init__(self, client: Any, library: IdentityLibrary, edits: EditHistory, generation: GenerationState,
                 timer: TimerFactory, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.library = library
        self.edits = edits
        self.generation = generation
        self.identity_changed = Event()  # IdentityEntry | None
        self.face_preview_changed = Event()  # uint8 RGB
        self.face_preview_caption = Event()  # str (PREVIEW_CAPTIONS), emitted before the image
        self.result_shown = Event()  # HistoryEntry | None (live results come as a transient entry)
        self.step_preview = Event()  # uint8 RGB
        self.progress_changed = Event()  # Progress | None
        self.likeness_changed = Event()  # float | None
        self.history_changed = Event()
        self.busy_changed = Event()  # bool
        self.cancelling_changed = Event()  # bool: a cancel was asked and the render has not stopped yet
        self.encoding_changed = Event()  # bool
        self.error = Event()  # FailureInfo
        self.models_changed = Event()  # tuple[ModelState, ...] | Exception
        self.models_progress = Event()  # Progress | None while Verify hashes
        self.catalog_changed = Event()  # tuple[SliderSpec, ...]
        self.timings_changed = Event()  # Mapping[str, float]
        self.status_message = Event()  # str
        self.result_warnings = Event()  # tuple[str, ...]: the newest result's warnings (() when it has none)
        self.shown_changed = Event()  # str: describe_shown of the shown entry ("" when none)
        self.ab_changed = Event()  # bool
        self.engine_state = Event()  # "starting", "ready", "failed", "closed"
        self.device_changed = Event()  # "cpu" or "cuda": where renders run
        self.backends_changed = Event()  # tuple[BackendOption, ...]
        self.saved = Event()  # path

        self.identity: IdentityEntry | None = None
        self.controls: ControlsModel | None = None  # ControlNets and LoRAs (set by the controls panel)
        self.history: list[HistoryEntry] = []
        self.shown: HistoryEntry | None = None
        self.previous: HistoryEntry | None = None
        self.showing_b = False
        self.model_states: Any = None
        self.catalog: tuple = ()
        self.device = ""  # "" until the engine says
        self.busy = False
        self.cancelling = False
        self.results_shown = 0
        self.stale_dropped = 0
        self._newest_shown = 0
        self._newest_render = 0
        self._newest_preview = 0
        self._last_progress: Progress | None = None
        self._drafts: dict[int, GenerateRequest] = {}  # gen of a draft render → its full-settings request
        self._preview_kinds: dict[int, str] = {}
        self._dragging = False
        self._encodes: set[int] = set()
        self.restore_faces = False  # PSFRGAN before e4e on single captures (the restore panel's toggle)
        self._pending_name: dict[int, str] = {}
        self._preview_throttle = Throttle(self._send_preview, 33, timer, clock)
        self._live_throttle = Throttle(lambda: self._send_render(live=True), 80, timer, clock)
        self._final_timer = timer(lambda: self._send_render())
        self.closed = False

        edits.changed.connect(self._on_edits_changed)
        generation.changed.connect(self._on_settings_changed)

    # -- properties -----------------------------------------------------------------------------
    @property
    def models(self) -> ModelsReport:
        return models_report(self.model_states)

    @property
    def models_ok(self) -> bool:
        """Every required model is there (optional ones may be missing)."""
        m = self.models
        return m.checked and not m.problem and not m.missing_required

    @property
    def newest_render_gen(self) -> int:
        return self._newest_render

    @property
    def engine_config(self) -> Any:
        return self.client.config

    # -- models and backends (the views ask here, never the bridge) -----------------------------
    def verify_models(self) -> None:
        self.client.check_models(verify=True)

    def probe_backends(self) -> None:
        self.client.probe_backends()

    def close(self) -> None:
        """The app is quitting: stop every timer (a debounced render, the throttled previews) and send
        nothing more to the bridge, which closes next. Safe to call twice."""
        self.closed = True
        self._stop_live()
        self._preview_throttle.cancel()

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
                self._final_timer.start(350)

    def capture(self, frame: np.ndarray, name: str = "") -> int:
        """Encode a camera frame or photo into a new identity (reported by `identity_changed`)."""
        gen = self.client.encode(frame, name=name, restore=self.restore_faces)
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

    def on_identity(self, gen: int, identity: Identity) -> None:
        self._finish_encode(gen)
        entry = self.library.add(identity)
        self.status_message.emit(f"Captured {entry.identity.name}.")
        self._set_identity(entry)

    def on_burst(self, gen: int, burst: Any) -> None:
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

    def _next_seed(self) -> None:
        if not self.generation.settings.seed_locked:
            with self.generation.changed.blocked():
                self.generation.new_seed()
            self.generation.changed.emit(self.generation.settings, "seed")

    def generate(self) -> int:
        """Render at full quality now (a new seed first unless the seed is locked)."""
        self._stop_live()
        self._next_seed()
        return self._send_render()

    def draft(self) -> int:
        """Render a quick draft: smaller, fewer steps, one picture, same seed, identity and edits."""
        self._stop_live()
        self._next_seed()
        return self._send_render(draft=True)

    @property
    def can_refine(self) -> bool:
        return self.shown is not None and self.shown.draft_of is not None

    def refine(self) -> int:
        """Render the shown draft's request at full settings (its seed, identity, prompt and edits)."""
        if self.shown is None or self.shown.draft_of is None:
            return 0
        self._stop_live()
        full = replace(self.shown.draft_of, seed=self.shown.seed)
        return self._submit(full, live=False)

    def _stop_live(self) -> None:
        self._final_timer.stop()
        self._live_throttle.cancel()

    def _send_render(self, *, live: bool = False, draft: bool = False) -> int:
        if self.closed:
            return 0
        try:
            full = self.current_request(live=live)
            request = draft_request(full) if draft else full
        except Exception as exc:
            self.error.emit(FailureInfo.from_exception("settings", exc))
            return 0
        gen = self._submit(request, live=live)
        if draft:
            self._drafts[gen] = full
        return gen

    def _submit(self, request: GenerateRequest, *, live: bool) -> int:
        face = self.identity.identity.aligned_face if self.identity else None
        gen = self.client.submit_render(request, live=live, identity_face=face)
        self._newest_render = gen
        self._last_progress = None
        self._set_cancelling(False)
        return gen

    def cancel(self) -> None:
        """Stop the running render at its next step boundary; acknowledged at once ("Cancelling…")."""
        self._stop_live()
        if self.busy and not self.cancelling:
            self._set_cancelling(True)
            self.status_message.emit("Cancelling… the render stops at the end of the current step.")
        self.client.cancel()

    def _set_cancelling(self, on: bool) -> None:
        if on != self.cancelling:
            self.cancelling = on
            self.cancelling_changed.emit(on)

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
                self._stop_live()
                self._send_render()

    def _on_settings_changed(self, settings: GenerationSettings, what: str) -> None:
        if what in ("live", "seed_locked", "live_steps") or not settings.live:
            return
        self._live_throttle.poke()
        self._final_timer.start(350)

    def controls_changed(self) -> None:
        """A ControlNet or LoRA setting changed (not a generation setting): live mode re-renders too."""
        self._on_settings_changed(self.generation.settings, "controls")

    def _send_preview(self) -> None:
        if self.identity is None or self.closed:
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

    # -- reports from the bridge (GUI thread) ---------------------------------------------------
    def on_result(self, gen: int, result: Result, live: int) -> None:
        draft_of = self._drafts.pop(gen, None)
        if gen <= self._newest_shown:
            self.stale_dropped += 1
            log.debug("dropping stale result %d (showing %d)", gen, self._newest_shown)
            return
        self._newest_shown = gen
        self.results_shown += 1
        ident_id = self.identity.identity.id if self.identity else ""
        entries = [HistoryEntry(gen, result, i, thumbnail(img, 96), ident_id, draft_of=draft_of)
                   for i, img in enumerate(result.images)]
        if not live:
            self.history.extend(entries)
            self.history_changed.emit()
        self._show(entries[0] if entries else None)
        if gen >= self._newest_render:
            self.progress_changed.emit(None)
        self.timings_changed.emit(dict(result.timings))
        warnings = tuple(str(w) for w in result.warnings)
        self.result_warnings.emit(warnings)
        if warnings:
            # e.g. "Rendered on torch: <what the export lacks and the command that adds it>"
            log.info("render %d warned: %s", gen, " | ".join(warnings))
        if not live and entries:
            self.status_message.emit(f"⚠ {warnings[0]}" if warnings else describe_shown(entries[0]))

    def _show(self, entry: HistoryEntry | None) -> None:
        if self.shown is not None and entry is not None and self.shown.result is not entry.result:
            self.previous = self.shown
        self.shown = entry
        if self.showing_b:
            self.showing_b = False
            self.ab_changed.emit(False)
        self.result_shown.emit(entry)
        self.shown_changed.emit(describe_shown(entry))
        self.likeness_changed.emit(entry.likeness[0] if entry and entry.likeness else None)

    def show_history(self, index: int, *, restore: bool = True) -> None:
        """Show a history entry and (by default) restore its full state (a draft restores its full settings)."""
        if not (0 <= index < len(self.history)):
            return
        entry = self.history[index]
        if restore:
            self.restore_request(entry.draft_of or entry.result.request, seed=entry.seed)
        self._show(entry)

    def toggle_ab(self, show_b: bool | None = None) -> None:
        """Show the previous result in place of the current one (and back)."""
        if self.previous is None:
            return
        self.showing_b = (not self.showing_b) if show_b is None else show_b
        self.result_shown.emit(self.previous if self.showing_b else self.shown)
        self.ab_changed.emit(self.showing_b)

    def on_progress(self, gen: int, p: Progress) -> None:
        if gen < self._newest_render:
            return
        self._last_progress = p
        self.progress_changed.emit(p)
        if p.preview is not None:
            self.step_preview.emit(p.preview)

    def on_cancelled(self, gen: int) -> None:
        self._drafts.pop(gen, None)
        if gen < self._newest_render:
            return
        self.progress_changed.emit(None)
        p = self._last_progress
        if p is not None and p.total > 0:
            where = f" after step {p.step} of {p.total} ({p.elapsed_s:.1f} s)"
        else:
            where = " before it started"
        self.status_message.emit(f"Cancelled{where}." + (" The previous result is still shown." if self.shown else ""))
        self._set_cancelling(False)

    def on_busy(self, busy: int) -> None:
        self.busy = bool(busy)
        self.busy_changed.emit(self.busy)
        if not self.busy:
            self.progress_changed.emit(None)
            self._set_cancelling(False)

    def on_failed(self, gen: int, info: FailureInfo) -> None:
        if gen in self._encodes:
            self._finish_encode(gen)
        self.error.emit(info)

    def on_face_preview(self, gen: int, image: np.ndarray) -> None:
        if gen >= self._newest_preview:
            kind = self._preview_kinds.get(gen, "settled")
            self.face_preview_caption.emit(PREVIEW_CAPTIONS[kind])
            self.face_preview_changed.emit(image)

    def on_likeness(self, gen: int, value: float) -> None:
        for e in self.history:
            if e.gen == gen and not e.likeness:
                e.likeness.append(value)
        if self.shown is not None and self.shown.gen == gen:
            self.likeness_changed.emit(value)

    def on_models(self, states: Any) -> None:
        self.model_states = states
        self.models_changed.emit(states)

    def on_catalog(self, catalog: tuple) -> None:
        self.catalog = catalog
        self.catalog_changed.emit(catalog)

    def on_device(self, device: str) -> None:
        self.device = device
        self.device_changed.emit(device)

    # -- restore and save -----------------------------------------------------------------------
    def restore_request(self, request: GenerateRequest, *, seed: int | None = None, source: str = "") -> None:
        """Put back the full state of a request: settings, edits, identity."""
        settings = GenerationSettings.from_request(request, self.generation.settings)
        if seed is not None:
            settings = replace(settings, seed=seed)
        with self.generation.changed.blocked():
            self.generation.set_all(settings)
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
