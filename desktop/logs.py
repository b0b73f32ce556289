"""The app's log file: rotating, in the user log folder."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

APP_NAME = "WPlusStudio"


def default_log_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


def setup_logging(log_dir: Path, *, debug: bool = False) -> Path:
    """Attach a rotating file handler (2 MB × 5) to the root logger; returns the log file path.

    Calling it again with the same folder does not add a second handler.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "wplus-studio.log"
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for h in root.handlers:
        if isinstance(h, logging.handlers.RotatingFileHandler) and Path(h.baseFilename) == path:
            return path
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=5, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return path


def remove_logging(log_dir: Path) -> None:
    """Detach and close the handler of `log_dir` (tests, shutdown)."""
    path = log_dir / "wplus-studio.log"
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.handlers.RotatingFileHandler) and Path(h.baseFilename) == path:
            root.removeHandler(h)
            h.close()
