"""The app's log file: rotating, in the user log folder (the same machinery as the CLIs: `engine.logs`)."""

from __future__ import annotations

from pathlib import Path

from engine.logs import APP_NAME, add_log_file, default_log_dir, remove_log_file, route_library_logging

__all__ = ["APP_NAME", "default_log_dir", "remove_logging", "setup_logging"]


def setup_logging(log_dir: Path, *, debug: bool = False) -> Path:
    """Attach a rotating file handler (2 MB × 5) to the root logger; returns the log file path.

    Calling it again with the same folder does not add a second handler. diffusers/transformers
    records go there too instead of to their own stderr handler.
    """
    path = add_log_file(log_dir / "wplus-studio.log", debug=debug)
    route_library_logging(debug=debug)
    return path


def remove_logging(log_dir: Path) -> None:
    """Detach and close the handler of `log_dir` (tests, shutdown)."""
    remove_log_file(log_dir / "wplus-studio.log")
