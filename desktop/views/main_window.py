"""The main window: panels, menus and shortcuts, drag and drop, banner and status bar.

It wires widgets to the view models and the camera; all inference goes through `StudioState` and the
bridge, so nothing here waits on the engine.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDesktopServices, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from desktop.camera.controller import CameraController
from desktop.camera.sources import list_sources
from desktop.viewmodel.capture import BURST_FRAMES, IMAGE_SUFFIXES, CaptureController
from desktop.viewmodel.controls import ControlsModel
from desktop.viewmodel.reports import BackendOption, FailureInfo
from desktop.viewmodel.studio import StudioState
from desktop.views.camera_panel import CameraPanel
from desktop.views.controls_panel import ControlsPanel
from desktop.views.dialogs import LicenceDialog, ModelsDialog
from desktop.views.edit_panel import EditPanel
from desktop.views.generation_panel import GenerationPanel
from desktop.views.identity_panel import IdentityPanel
from desktop.views.restore_panel import RestorePanel
from desktop.views.result_view import ResultView
from desktop.views.widgets import Banner, ElidedLabel, VerticalScroll
from engine.images import load_image

log = logging.getLogger(__name__)

# The restore card keeps room for its toggle and a four-line reason (1024 px wide windows); the aligned |
# restored faces beneath scroll into view.
RESTORE_FIT_HEIGHT = 88


@dataclass(frozen=True)
class AppPaths:
    """Folders the window shows or opens (chosen by the composition root)."""

    models_dir: Path
    models_reason: str = ""
    log_dir: Path | None = None
    identities_dir: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except Exception:
            return None


class MainWindow(QMainWindow):
    """The studio window."""

    models_apply_requested = Signal(str, str, str)  # folder, backend, device

    def __init__(self, studio: StudioState, capture: CaptureController, camera: CameraController,
                 settings: QSettings, paths: AppPaths, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.studio = studio
        self.captures = capture
        capture.consent.ask = self._ask_consent
        self.camera = camera
        self.settings = settings
        self.paths = paths
        self.setWindowTitle("W+ Studio")
        self.setObjectName("mainWindow")
        self.setAcceptDrops(True)
        self.resize(1440, 900)
        # no fixed minimum: the panels' own minimums (≈1024×750) keep every text and button whole
        self._backends: tuple[BackendOption, ...] = ()
        self._models_dialog: ModelsDialog | None = None
        self._consent_dialog: LicenceDialog | None = None

        self.banner = Banner()
        self.camera_panel = CameraPanel(camera)
        self.identity_panel = IdentityPanel(studio.library)
        self.generation_panel = GenerationPanel(studio.generation)
        self.edit_panel = EditPanel(studio.edits)
        self.result_view = ResultView()
        self.restore_panel = RestorePanel()
        self.controls_panel = ControlsPanel(ControlsModel(load_image), paths.models_dir, studio, settings)
        self.side_tabs = QTabWidget()
        self.side_tabs.addTab(self.edit_panel, "Edits")
        self.side_tabs.addTab(VerticalScroll(self.controls_panel), "ControlNet · LoRA")

        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self._card(self.camera_panel))
        left.addWidget(self._card(self.identity_panel))
        # the restore panel's reason wraps to several lines: the splitter leaves it their height (the faces
        # beneath scroll), so it is never clipped
        self.restore_scroll = VerticalScroll(self.restore_panel, fit_height=RESTORE_FIT_HEIGHT)
        self.restore_scroll.needs_height.connect(lambda extra: self._grow_left_card(2, extra))
        left.addWidget(self._card(self.restore_scroll))
        left.setStretchFactor(0, 5)
        left.setStretchFactor(1, 6)
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self._card(self.generation_panel))
        right.addWidget(self._card(self.side_tabs))
        right.setStretchFactor(0, 0)
        right.setStretchFactor(1, 1)
        center = self._card(self.result_view)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(center)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setStretchFactor(2, 0)
        self.splitter.setSizes([370, 660, 410])
        self._left, self._right = left, right
        root = QWidget()
        root.setObjectName("root")
        lay = QVBoxLayout(root)
        lay.setContentsMargins(10, 8, 10, 6)
        lay.setSpacing(8)
        lay.addWidget(self.banner)
        lay.addWidget(self.splitter, 1)
        self.setCentralWidget(root)

        self._build_actions()
        self._build_status()
        self._connect()
        self.camera_panel.set_sources(list_sources(), str(settings.value("camera/source", "")))
        self._restore_layout()

    def _grow_left_card(self, index: int, extra: int) -> None:
        """Give a card of the left column `extra` px taken from the cards above it, down to their minimums
        (the restored faces appear under the restore toggle); what does not fit scrolls."""
        sizes = self._left.sizes()
        for donor in range(index - 1, -1, -1):
            spare = sizes[donor] - self._left.widget(donor).minimumSizeHint().height()
            take = max(0, min(spare, extra))
            sizes[donor] -= take
            sizes[index] += take
            extra -= take
        self._left.setSizes(sizes)

    @staticmethod
    def _card(w: QWidget) -> QWidget:
        card = QWidget()
        card.setObjectName("card")
        card.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        lay = QVBoxLayout(card)
        lay.setContentsMargins(12, 10, 12, 12)
        lay.addWidget(w)
        return card

    # -- actions --------------------------------------------------------------------------------
    def _action(self, text: str, shortcuts: tuple[str | QKeySequence.StandardKey, ...] = (), slot=None,
                checkable: bool = False, tip: str = "") -> QAction:
        a = QAction(text, self)
        keys = [QKeySequence(s) for s in shortcuts]
        if keys:
            a.setShortcuts(keys)
        a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        a.setCheckable(checkable)
        shown = keys[0].toString(QKeySequence.SequenceFormat.NativeText) if keys else ""
        a.setToolTip(f"{tip or text.replace('…', '').replace('&', '')}" + (f" ({shown})" if shown else ""))
        if slot is not None:
            a.triggered.connect(slot)
        self.addAction(a)
        return a

    def _build_actions(self) -> None:
        s = self.studio
        self.act_open = self._action("&Open photo…", ("Ctrl+O",), self.open_photo_dialog)
        self.act_save = self._action("&Save image…", ("Ctrl+S",), self.save_dialog)
        self.act_save_all = self._action("Save &all…", ("Ctrl+Shift+S",), self.save_all_dialog)
        self.act_quit = self._action("&Quit", ("Ctrl+Q",), self.close)
        self.act_undo = self._action("&Undo edit", ("Ctrl+Z",), s.edits.undo)
        self.act_redo = self._action("&Redo edit", ("Ctrl+Shift+Z", "Ctrl+Y"), s.edits.redo)
        self.act_reset = self._action("Reset all &edits", ("Ctrl+R",), s.edits.reset_all)
        self.act_generate = self._action("&Generate", ("Ctrl+Return", "Ctrl+Enter"), s.generate,
                                         tip="Generate at the full settings")
        self.act_draft = self._action("&Draft", ("Ctrl+D",), s.draft,
                                      tip="A quick draft: half size, fewer steps, same seed and identity")
        self.act_refine = self._action("&Refine draft", ("Ctrl+Shift+Return", "Ctrl+Shift+Enter"), s.refine,
                                       tip="Render the shown draft at the full settings")
        self.act_cancel = self._action("&Cancel", ("Esc",), s.cancel)
        self.act_live = self._action("&Live mode", ("Ctrl+L",), None, checkable=True,
                                     tip="Re-render while sliders move")
        self.act_new_seed = self._action("&New seed", ("Ctrl+Shift+N",), s.generation.new_seed)
        self.act_ab = self._action("Compare &A/B", ("Ctrl+B",), lambda: s.toggle_ab())
        self.act_capture = self._action("&Capture", ("Space",), self.capture)
        self.act_burst = self._action("&Burst capture", ("Shift+Space",), self.burst)
        self.act_models = self._action("&Models…", (), self.show_models_dialog)
        self.act_licence = self._action("&Licences and consent…", (), self.show_licence)
        self.act_log = self._action("Open &log folder", (), self.open_log_folder)
        self.act_rename = QAction("Rename identity", self.identity_panel.list)
        self.act_rename.setShortcut(QKeySequence("F2"))
        self.act_rename.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        self.act_rename.triggered.connect(self.identity_panel.rename_button.click)
        self.act_delete = QAction("Delete identity", self.identity_panel.list)
        self.act_delete.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        self.act_delete.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        self.act_delete.triggered.connect(self.identity_panel.delete_button.click)
        self.identity_panel.list.addActions([self.act_rename, self.act_delete])

        mb = self.menuBar()
        for title, acts in (
            ("&File", [self.act_open, None, self.act_save, self.act_save_all, None, self.act_quit]),
            ("&Edit", [self.act_undo, self.act_redo, self.act_reset]),
            ("&Camera", [self.act_capture, self.act_burst]),
            ("&Generate", [self.act_generate, self.act_draft, self.act_refine, self.act_cancel, None, self.act_live, self.act_new_seed, self.act_ab]),
            ("&Models", [self.act_models]),
            ("&Help", [self.act_licence, self.act_log]),
        ):
            menu = mb.addMenu(title)
            for a in acts:
                menu.addSeparator() if a is None else menu.addAction(a)

        gp, cp = self.generation_panel, self.camera_panel
        gp.generate.setToolTip(self.act_generate.toolTip())
        gp.cancel.setToolTip(self.act_cancel.toolTip())
        gp.draft.setToolTip(self.act_draft.toolTip())
        gp.refine.setToolTip(self.act_refine.toolTip())
        self.act_refine.setEnabled(False)
        cp.capture_button.setToolTip(self.act_capture.toolTip() + " — encode the current frame into an identity")
        cp.burst_button.setToolTip(self.act_burst.toolTip() + f" — {BURST_FRAMES} frames, best kept")
        cp.open_button.setToolTip(self.act_open.toolTip())

    def _build_status(self) -> None:
        sb = self.statusBar()
        self.status_device = QLabel("")
        self.status_memory = QLabel("")
        self.status_timing = ElidedLabel("", 80)
        # long texts are cut ("…") rather than widen the window; the message keeps room to be read
        self.status_state = ElidedLabel("Starting the engine…", 240)
        self.status_models = ElidedLabel("", 80, auto_tooltip=False)  # its tooltip lists the missing files
        # the message comes first: the models summary and the timings give way to it
        self.status_models.setMaximumWidth(260)
        self.status_timing.setMaximumWidth(240)
        self.status_models.setObjectName("statusWarn")
        self.status_models.setToolTip("Models ▸ Models… says what is missing and how to get it")
        self.status_shown = QLabel("")
        self.status_shown.setToolTip("What the result area shows: a draft or the full render")
        for w in (self.status_shown, self.status_models, self.status_device, self.status_memory, self.status_timing):
            if not w.objectName():  # the models field keeps its warning colour
                w.setObjectName("statusField")
            sb.addPermanentWidget(w)
        sb.addWidget(self.status_state, 1)
        self._memory_timer = QTimer(self)
        self._memory_timer.setInterval(2000)
        self._memory_timer.timeout.connect(self._update_memory)
        self._memory_timer.start()
        self._update_device()
        self._update_memory()

    def _connect(self) -> None:
        s, gp, rv, ip = self.studio, self.generation_panel, self.result_view, self.identity_panel
        gp.generate_clicked.connect(s.generate)
        gp.draft_clicked.connect(s.draft)
        gp.refine_clicked.connect(s.refine)
        gp.cancel_clicked.connect(s.cancel)
        self.act_live.toggled.connect(s.set_live)
        self.act_live.setChecked(s.generation.settings.live)
        s.generation.changed.connect(lambda st, _w: self.act_live.setChecked(st.live))
        self.camera_panel.capture_button.clicked.connect(self.capture)
        self.camera_panel.burst_button.clicked.connect(self.burst)
        self.camera_panel.open_button.clicked.connect(self.open_photo_dialog)
        self.camera_panel.source_chosen.connect(self._start_camera)
        self.camera_panel.stop_requested.connect(self.camera.stop)
        self.camera.failed.connect(lambda e: self.show_error(FailureInfo.from_exception("camera", e)))
        self.restore_panel.connect_to(s, self.camera)
        ip.selected.connect(s.select_identity)
        ip.rename_requested.connect(self._rename)
        ip.delete_requested.connect(self._delete)
        ip.undo_delete_requested.connect(s.library.undo_delete)
        ip.mix_requested.connect(lambda a, b, t: s.mix(a, b, t))
        rv.history_clicked.connect(s.show_history)
        rv.save_clicked.connect(self.save_dialog)
        rv.save_all_clicked.connect(self.save_all_dialog)
        rv.ab_toggled.connect(lambda on: s.toggle_ab(on))
        rv.guidance.open_models.connect(self.show_models_dialog)
        s.identity_changed.connect(ip.show_identity)
        s.face_preview_caption.connect(ip.preview_view.set_caption)
        s.face_preview_changed.connect(ip.show_preview)
        s.result_shown.connect(self._on_result_shown)
        s.step_preview.connect(rv.show_step)
        s.progress_changed.connect(rv.set_progress)
        s.likeness_changed.connect(rv.set_likeness)
        s.history_changed.connect(lambda: rv.set_history(s.history))
        s.busy_changed.connect(self._on_busy)
        s.cancelling_changed.connect(self._on_cancelling)
        s.shown_changed.connect(self._on_shown_changed)
        s.device_changed.connect(self._on_device)
        s.encoding_changed.connect(lambda on: self.camera_panel.capture_button.setEnabled(not on))
        s.error.connect(self.show_error)
        s.models_changed.connect(self._on_models)
        s.catalog_changed.connect(self.edit_panel.set_catalog)
        s.timings_changed.connect(self._on_timings)
        s.status_message.connect(self.status_state.setText)
        s.result_warnings.connect(self._on_result_warnings)
        s.ab_changed.connect(self._on_ab)
        self.captures.status.connect(self.status_state.setText)
        self.captures.still_shown.connect(self.camera_panel.show_still)
        s.saved.connect(lambda p: self.status_state.setText(f"Saved {p}"))
        s.backends_changed.connect(self._on_backends)
        s.engine_state.connect(self._on_engine_state)
        s.edits.history_changed.connect(self._on_edit_history)
        self._on_edit_history()
        if s.catalog:
            self.edit_panel.set_catalog(s.catalog)
        if s.model_states is not None:
            self._on_models(s.model_states)

    # -- layout persistence ---------------------------------------------------------------------
    def _restore_layout(self) -> None:
        geo = self.settings.value("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        for key, sp in (("window/splitter", self.splitter), ("window/left", self._left), ("window/right", self._right)):
            state = self.settings.value(key)
            if state is not None:
                sp.restoreState(state)

    def save_state(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/splitter", self.splitter.saveState())
        self.settings.setValue("window/left", self._left.saveState())
        self.settings.setValue("window/right", self._right.saveState())
        self.settings.setValue("camera/source", self.camera_panel.current_spec())
        self.studio.generation.settings.save(self.settings)
        self.controls_panel.save_settings(self.settings)
        self.settings.sync()

    def stop_timers(self) -> None:
        """The app is quitting (`StudioApp.shutdown`)."""
        self._memory_timer.stop()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.save_state()
        self.captures.stop_burst()
        self.camera.stop()
        super().closeEvent(event)

    # -- camera and capture ---------------------------------------------------------------------
    def _start_camera(self, spec: str) -> None:
        self.settings.setValue("camera/source", spec)
        self.camera.start(spec)

    def _ask_consent(self, answer) -> None:
        """The consent gate's question: the licence dialog with its consent note (non-modal)."""
        dlg = LicenceDialog(ask_consent=True, parent=self)
        self._consent_dialog = dlg
        dlg.finished.connect(lambda code: answer(code == LicenceDialog.DialogCode.Accepted))
        dlg.open()

    def capture(self) -> None:
        self.captures.capture()

    def burst(self) -> None:
        self.captures.burst()

    def open_photo_dialog(self) -> None:
        start = str(self.settings.value("paths/open", str(Path.home())))
        path, _ = QFileDialog.getOpenFileName(self, "Open a photo", start,
                                              "Images (*.png *.jpg *.jpeg *.webp *.bmp)")
        if path:
            self.settings.setValue("paths/open", str(Path(path).parent))
            self.open_path(path)

    def open_path(self, path: str) -> None:
        """Open a file: one of our PNGs restores its settings, any other photo becomes an identity."""
        self.captures.open_path(path)

    # -- drag and drop --------------------------------------------------------------------------
    @staticmethod
    def _dropped_paths(event) -> list[str]:
        md = event.mimeData()
        if not md.hasUrls():
            return []
        return [u.toLocalFile() for u in md.urls() if u.isLocalFile() and u.toLocalFile().lower().endswith(IMAGE_SUFFIXES)]

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if self._dropped_paths(event):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = self._dropped_paths(event)
        if paths:
            event.acceptProposedAction()
            self.open_path(paths[0])

    # -- identities -----------------------------------------------------------------------------
    def _rename(self, identity_id: str, name: str) -> None:
        try:
            self.studio.library.rename(identity_id, name)
        except Exception as exc:
            self.show_error(FailureInfo.from_exception("rename", exc))

    def _delete(self, identity_id: str) -> None:
        entry = self.studio.library.get(identity_id)
        try:
            self.studio.library.delete(identity_id)
        except Exception as exc:
            self.show_error(FailureInfo.from_exception("delete", exc))
            return
        if entry is not None:
            self.status_state.setText(f"Deleted {entry.identity.name} — Undo delete brings it back.")
        if self.studio.identity is not None and self.studio.identity.identity.id == identity_id:
            self.studio.select_identity(None)

    # -- results --------------------------------------------------------------------------------
    def _on_result_shown(self, entry) -> None:
        if entry is not None:
            self.result_view.show_guidance(False)  # results win over the models guidance
        self.result_view.show_entry(entry)
        self.result_view.ab_button.setEnabled(self.studio.previous is not None)
        self.act_save.setEnabled(entry is not None)

    def _on_result_warnings(self, warnings: tuple[str, ...]) -> None:
        """The newest result's warnings in the banner (amber; an error shown stays); a clean result clears them."""
        if not warnings:
            self.banner.clear_warning()
            return
        self.banner.show_warning(warnings[0], "\n".join(warnings[1:]))

    def _on_ab(self, showing_b: bool) -> None:
        self.result_view.ab_button.blockSignals(True)
        self.result_view.ab_button.setChecked(showing_b)
        self.result_view.ab_button.blockSignals(False)
        self.result_view.image.set_caption("B · previous result" if showing_b else "")

    def _on_busy(self, busy: bool) -> None:
        self._update_buttons()
        if busy:
            self.result_view.show_guidance(False)  # the guidance never covers a render in progress
            self.status_state.setText("Generating…")
        else:
            self._update_guidance()
            if self.status_state.text() == "Generating…":  # keep what the studio said (cancelled, shown)
                self.status_state.setText("Ready.")

    def _on_cancelling(self, _on: bool) -> None:
        self._update_buttons()

    def _update_buttons(self) -> None:
        s = self.studio
        self.generation_panel.set_state(busy=s.busy, cancelling=s.cancelling, can_refine=s.can_refine)
        for a in (self.act_generate, self.act_draft):
            a.setEnabled(not s.cancelling)
        self.act_refine.setEnabled(s.can_refine and not s.cancelling)
        self.act_cancel.setEnabled(s.busy and not s.cancelling)

    def _on_shown_changed(self, text: str) -> None:
        entry = self.studio.shown
        self.status_shown.setText("" if entry is None else ("Draft shown" if entry.is_draft else "Full render shown"))
        self.status_shown.setToolTip(text)
        self._update_buttons()

    def _on_device(self, device: str) -> None:
        """On the CPU the draft is the first thing to try; on a GPU the official settings stay the default."""
        self.generation_panel.set_draft_first(device == "cpu")
        self._update_device()
        if device == "cpu" and self.studio.models_ok:
            self.status_state.setText("Rendering on the CPU: a full render takes minutes. Draft (Ctrl+D) shows a "
                                      "half-size version in a fraction of that; Refine then renders it in full.")

    def _on_edit_history(self) -> None:
        self.act_undo.setEnabled(self.studio.edits.can_undo)
        self.act_redo.setEnabled(self.studio.edits.can_redo)

    def save_dialog(self) -> None:
        if self.studio.shown is None:
            return
        start = Path(str(self.settings.value("paths/save", str(Path.home()))))
        name = f"wplus_seed{self.studio.shown.seed}.png"
        path, _ = QFileDialog.getSaveFileName(self, "Save image", str(start / name), "PNG image (*.png)")
        if path:
            if not path.lower().endswith(".png"):
                path += ".png"
            self.settings.setValue("paths/save", str(Path(path).parent))
            self.studio.save_shown(path)

    def save_all_dialog(self) -> None:
        if not self.studio.history:
            return
        start = str(self.settings.value("paths/save", str(Path.home())))
        folder = QFileDialog.getExistingDirectory(self, "Save all results into", start)
        if folder:
            self.settings.setValue("paths/save", folder)
            n = self.studio.save_all(folder)
            self.status_state.setText(f"Saving {n} images to {folder}…")

    # -- errors, models, status -----------------------------------------------------------------
    def show_error(self, info: FailureInfo) -> None:
        log.error("%s: %s", info.where, info.message)
        self.banner.show_error(info.message, info.hint, info.details)

    def _on_models(self, _states) -> None:
        report = self.studio.models
        self.result_view.guidance.set_report(str(self.paths.models_dir), report)
        self._update_guidance()
        self.status_models.setText(report.summary())
        self.status_models.setToolTip("\n".join(f"{m.id}: {report.cost(m)}"
                                                for m in report.missing_required + report.missing_optional)
                                      or "Models ▸ Models… says what is missing and how to get it")
        if report.missing_required:
            self.status_state.setText("Models missing — see Models ▸ Models…")
        if self._models_dialog is not None:
            self._models_dialog.set_states(self.studio.model_states)

    def _update_guidance(self) -> None:
        """The guidance fills the result area only while generation is impossible and nothing else is there."""
        report = self.studio.models
        blocked = report.checked and not report.can_generate
        self.result_view.show_guidance(blocked and self.studio.shown is None and not self.studio.busy)

    def _on_engine_state(self, state: str) -> None:
        if state == "ready" and self.studio.models_ok:
            self.status_state.setText("Ready.")
        elif state == "starting":
            self.status_state.setText("Starting the engine…")

    def show_models_dialog(self) -> None:
        if self._models_dialog is None:
            self._models_dialog = ModelsDialog(self)
            self._models_dialog.apply_requested.connect(self.models_apply_requested)
            self._models_dialog.verify_requested.connect(self.studio.verify_models)
            self.studio.models_progress.connect(self._models_dialog.set_progress)
        cfg = self.studio.engine_config
        self._models_dialog.set_folder(str(cfg.models_dir), self.paths.models_reason)
        if self.studio.model_states is not None:
            self._models_dialog.set_states(self.studio.model_states)
        self._models_dialog.set_backends(self._backends, cfg.backend, cfg.device)
        self.studio.probe_backends()
        self._models_dialog.show()
        self._models_dialog.raise_()

    def _on_backends(self, options: tuple[BackendOption, ...]) -> None:
        self._backends = options
        if self._models_dialog is not None:
            cfg = self.studio.engine_config
            self._models_dialog.set_backends(options, cfg.backend, cfg.device)
        self._update_device()

    def _update_device(self) -> None:
        cfg = self.studio.engine_config
        device = cfg.device if cfg.device not in ("", "auto") or not self.studio.device else f"auto → {self.studio.device}"
        self.status_device.setText(f"Device {device} · {cfg.backend}")

    def _update_memory(self) -> None:
        mb = _rss_mb()
        self.status_memory.setText("" if mb is None else f"RAM {mb:,.0f} MB")

    def _on_timings(self, timings) -> None:
        secs = {k.removesuffix("_s"): float(v) for k, v in timings.items()
                if k.endswith("_s") or k in ("total", "unet", "decode")}
        if not secs:
            return
        total = secs.pop("total", sum(secs.values()))
        parts = " · ".join(f"{k} {v:.2f}s" for k, v in list(secs.items())[:3])
        self.status_timing.setText(f"Last {total:.2f} s" + (f" ({parts})" if parts else ""))

    def show_licence(self) -> None:
        LicenceDialog(parent=self).open()

    def open_log_folder(self) -> None:
        if self.paths.log_dir is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.paths.log_dir)))
