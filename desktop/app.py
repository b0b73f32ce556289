"""Composition root: QApplication, settings, logging, the bridge, the camera and the window.

Singletons are built here and passed down; nothing else in `desktop/` creates them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from desktop.camera.controller import AnalyzerFactory, CameraController
from desktop.engine_client import EngineClient, SessionFactory
from desktop.logs import APP_NAME, default_log_dir, setup_logging
from desktop.qtcompat import binding_leaks_references
from desktop.viewmodel.capture import CaptureController, ConsentGate
from desktop.viewmodel.edits import EditHistory
from desktop.viewmodel.generation import GenerationSettings, GenerationState
from desktop.viewmodel.identities import IdentityLibrary
from desktop.viewmodel.studio import StudioState
from desktop.views.binding import EngineBinding, qt_timer
from desktop.views.main_window import AppPaths, MainWindow
from engine.config import EngineConfig
from engine.models.folder import resolve_models_dir

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


@dataclass(frozen=True)
class AppOptions:
    """Everything the composition root may be told (command line, tests, the bench).

    `settings_path` set: an INI file there (tests); None: the platform's native settings.
    """

    models_dir: Path | None = None
    debug: bool = False
    settings_path: Path | None = None
    log_dir: Path | None = None
    data_dir: Path | None = None
    session_factory: SessionFactory | None = None
    metadata: Any = None
    analyzer_factory: AnalyzerFactory | None = None
    source_opener: Callable[[str], Any] | None = None
    start_engine: bool = True
    check_binding: bool = True
    preload_faces: bool = True
    open_files: tuple[Path, ...] = ()  # photos or our PNGs to open at start (positional arguments)


def open_settings(path: Path | None) -> QSettings:
    if path is not None:
        return QSettings(str(path), QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.NativeFormat, QSettings.Scope.UserScope, APP_NAME, APP_NAME)


def models_dir_for(cli: Path | None, settings: QSettings) -> tuple[Path, str]:
    """The models folder and why: the engine's one rule, with the folder saved in the settings."""
    saved = settings.value("models/dir")
    return resolve_models_dir(None if cli is None else str(cli), str(saved) if saved else None)


def load_stylesheet() -> str:
    qss = RESOURCES / "style.qss"
    return qss.read_text("utf-8") if qss.is_file() else ""


class StudioApp:
    """Builds and owns the app's objects; `shutdown()` stops threads in order."""

    def __init__(self, options: AppOptions, qapp: QApplication | None = None) -> None:
        self.options = options
        self.qapp = qapp or QApplication.instance() or QApplication(sys.argv[:1])
        self.qapp.setApplicationName(APP_NAME)
        self.qapp.setOrganizationName(APP_NAME)
        self.qapp.setStyle("Fusion")
        self.qapp.setStyleSheet(load_stylesheet())
        icon = RESOURCES / "icons" / "app.svg"
        if icon.is_file():
            self.qapp.setWindowIcon(QIcon(str(icon)))
        self.settings = open_settings(options.settings_path)
        self.log_dir = options.log_dir or default_log_dir()
        self.log_path = setup_logging(self.log_dir, debug=options.debug)
        models_dir, reason = models_dir_for(options.models_dir, self.settings)
        log.info("W+ Studio starting; models folder %s (%s)", models_dir, reason)
        import platformdirs

        data_dir = options.data_dir or Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
        config = EngineConfig(models_dir=models_dir, device=str(self.settings.value("engine/device", "auto")),
                              backend=str(self.settings.value("engine/backend", "auto")))
        self.client = EngineClient(config, options.session_factory, options.metadata)
        self.camera = CameraController(options.analyzer_factory, **(
            {"source_opener": options.source_opener} if options.source_opener else {}))
        self.library = IdentityLibrary(data_dir / "identities")
        problems = self.library.load()
        self.edits = EditHistory()
        self.generation = GenerationState(GenerationSettings.load(self.settings))
        self.studio = StudioState(self.client, self.library, self.edits, self.generation, qt_timer)
        self.captures = CaptureController(self.studio, self.client, self.camera, ConsentGate(self.settings), qt_timer)
        self.binding = EngineBinding(self.client, self.studio, self.captures)
        self.paths = AppPaths(models_dir, reason, self.log_dir, data_dir / "identities")
        self.window = MainWindow(self.studio, self.captures, self.camera, self.settings, self.paths)
        self.window.models_apply_requested.connect(self.apply_models)
        for p in problems:
            self.window.banner.show_error(f"An identity could not be read: {p}", "It was skipped.")
        if options.check_binding and binding_leaks_references():
            import PySide6

            log.error("PySide6 %s drops references on every call; the app will crash after a while", PySide6.__version__)
            self.window.banner.show_error(
                f"This Qt binding (PySide6 {PySide6.__version__}) has a reference-counting bug that crashes the app "
                "after a while.", "Install PySide6 6.11.3: pip install \"PySide6-Essentials==6.11.3\" "
                "\"PySide6-Addons==6.11.3\" \"shiboken6==6.11.3\"")
        self.qapp.aboutToQuit.connect(self.shutdown)
        self._shut = False
        if options.start_engine:
            self.client.start()
        if options.preload_faces:
            # dlib's landmark model load holds the GIL for 0.5–1 s: pay it while the window appears,
            # not when the user starts the camera
            self.camera.preload()

    def open_files(self, paths: list[str]) -> None:
        """Files given on the command line or by "Open with…": photos are captured (after consent), our
        PNGs restore their settings. Only the first is opened (one identity at a time); the rest are named."""
        if not paths:
            return
        self.captures.open_path(paths[0])
        if len(paths) > 1:
            log.info("opened %s; ignored %s", paths[0], paths[1:])
            self.window.status_state.setText(f"Opened {Path(paths[0]).name}; {len(paths) - 1} more file(s) ignored "
                                             "(one photo at a time).")

    def apply_models(self, folder: str, backend: str, device: str) -> None:
        """Reopen the session with another models folder, backend or device (Models dialog)."""
        self.settings.setValue("models/dir", folder)
        self.settings.setValue("engine/backend", backend)
        self.settings.setValue("engine/device", device)
        config = replace(self.client.config, models_dir=Path(folder), backend=backend, device=device)
        self.window.paths = replace(self.window.paths, models_dir=Path(folder), models_reason="chosen in the Models dialog")
        self.client.reopen(config)
        self.window._update_device()

    def shutdown(self) -> None:
        """Save the settings, then stop in order: timers, workers, the bridge. Safe to call twice.

        Timers first, so a debounced render or a throttled preview cannot fire into the closed bridge;
        then the camera's threads; then the reports still queued for the GUI thread are dropped; last the
        bridge cancels the running render and joins its threads (the engine session is closed there).
        """
        if self._shut:
            return
        self._shut = True
        self.window.save_state()
        self.studio.close()
        self.captures.stop_burst()
        self.window.stop_timers()
        self.camera.stop()
        self.binding.close()
        self.client.close()
        self.library.purge_trash()
        log.info("W+ Studio stopped")


def run(options: AppOptions) -> int:
    """Build the app, show the window, run the event loop."""
    qapp = QApplication.instance() or QApplication(sys.argv[:1])
    app = StudioApp(options, qapp)
    app.window.show()
    app.open_files([str(p) for p in options.open_files])
    try:
        return int(qapp.exec())
    finally:
        app.shutdown()
