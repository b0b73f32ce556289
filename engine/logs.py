"""Where log records go, for every entry point (`wplus`, `wplus-export`, the desktop app).

Everything (ours, the libraries', Python warnings) goes to a rotating log file. The console shows only
what the program itself reports (records of `engine`, `export`, `desktop` at WARNING and above);
with `--debug` it shows everything, libraries included. The CLIs print their own progress and results.

diffusers and transformers log through a private stderr handler that does not propagate; they are
routed to the root logger through their public switches (`disable_default_handler`,
`enable_propagation`, `disable_progress_bar`) the moment their logging module is imported, so that a
command that never loads them never pays for importing them.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import logging.handlers
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

APP_NAME = "WPlusStudio"
LOG_DIR_ENV = "WPLUS_LOG_DIR"
OWN_PACKAGES = ("engine", "export", "desktop", "__main__")
# Libraries with their own console handler: their logging module and the switches that route it.
LIBRARY_LOGGING = ("diffusers.utils.logging", "transformers.utils.logging")
_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


def default_log_dir() -> Path:
    """`WPLUS_LOG_DIR` if set, else the user log folder (platformdirs)."""
    env = os.environ.get(LOG_DIR_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


class _LogFile(logging.handlers.RotatingFileHandler):
    """The rotating log file (2 MB × 5); its own class so a second setup replaces it."""


class _Console(logging.Handler):
    """Writes to the *current* `sys.stderr` (tests swap it), our records only unless `everything`."""

    def __init__(self, everything: bool) -> None:
        super().__init__(logging.DEBUG if everything else logging.WARNING)
        self.everything = everything
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        return (self.everything or record.name.split(".")[0] in OWN_PACKAGES) and bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def add_log_file(path: Path, *, debug: bool = False) -> Path:
    """Attach the rotating log file `path` to the root logger (replacing an earlier one); returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for h in list(root.handlers):
        if isinstance(h, _LogFile):
            if Path(h.baseFilename) == Path(os.path.abspath(path)):
                return path
            root.removeHandler(h)
            h.close()
    handler = _LogFile(path, maxBytes=2_000_000, backupCount=5, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    return path


def remove_log_file(path: Path) -> None:
    """Detach and close the log file `path` (tests, shutdown)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _LogFile) and Path(h.baseFilename) == Path(os.path.abspath(path)):
            root.removeHandler(h)
            h.close()


def setup_cli_logging(name: str, *, debug: bool = False, log_dir: Path | None = None) -> Path:
    """Configure logging for a command-line entry point; returns the log file.

    Args:
        name: the log file's stem (`wplus` → `wplus.log`).
        debug: show every record on the console (libraries and Python warnings included), and
            DEBUG records in the file.
        log_dir: the folder of the log file (default: `default_log_dir()`).
    """
    path = add_log_file((log_dir or default_log_dir()) / f"{name}.log", debug=debug)
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _Console):
            root.removeHandler(h)
    root.addHandler(_Console(everything=debug))
    # warnings.warn → the "py.warnings" logger → the file (console: --debug). captureWarnings(True) is a
    # no-op while it believes it is already on, even if something (a test runner's catch_warnings, a
    # library) has put `warnings.showwarning` back since; switching it off first makes it take effect.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    if not debug:
        # huggingface_hub reads it at import; transformers' "Loading weights" bars follow it
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    route_library_logging(debug=debug)
    return path


def route_library_logging(*, debug: bool = False) -> None:
    """Send the diffusers/transformers records to the root logger instead of their own stderr handler.

    Libraries already imported are switched now; the others when their logging module is imported.
    Their progress bars are shown only with `debug`.
    """
    for name in LIBRARY_LOGGING:
        module = sys.modules.get(name)
        if module is not None:
            _route(module, debug)
    for finder in sys.meta_path:
        if isinstance(finder, _RouteOnImport):
            finder.debug = debug
            return
    sys.meta_path.insert(0, _RouteOnImport(debug))


def _route(module: ModuleType, debug: bool) -> None:
    module.disable_default_handler()  # also configures the library's root logger if it was not yet
    module.enable_propagation()
    if debug:
        module.enable_progress_bar()
    else:
        module.disable_progress_bar()


class _RouteOnImport(importlib.abc.MetaPathFinder):
    """Finds a library logging module through the other finders and routes it right after it ran."""

    def __init__(self, debug: bool) -> None:
        self.debug = debug

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in LIBRARY_LOGGING:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _RoutingLoader(spec.loader, self.debug)
                return spec
        return None


class _RoutingLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, debug: bool) -> None:
        self.loader = loader
        self.debug = debug

    def __getattr__(self, name: str) -> object:  # get_source, get_resource_reader, …: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        try:
            _route(module, self.debug)
        except AttributeError as exc:  # a release without these switches: keep its own handler
            warnings.warn(f"cannot route {module.__name__} to the log file: {exc}", stacklevel=1)
