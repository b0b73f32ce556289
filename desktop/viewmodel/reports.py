"""What the bridge reports that the view models and views show: failures and backend choices (no Qt)."""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from engine.errors import EngineError


@dataclass(frozen=True)
class BackendOption:
    """One backend/device choice and why it cannot be used (empty `reason` when it can)."""

    kind: str  # "backend" or "device"
    name: str
    available: bool
    reason: str = ""


@dataclass(frozen=True)
class FailureInfo:
    """An error as the GUI shows it: a message, a hint, and the technical details."""

    where: str
    message: str
    hint: str
    details: str
    exception_type: str

    @classmethod
    def from_exception(cls, where: str, exc: BaseException) -> FailureInfo:
        if isinstance(exc, EngineError):
            message, hint = exc.user_message, exc.hint
        else:
            message, hint = f"{type(exc).__name__}: {exc}", "See the log file for details (Help ▸ Open log folder)."
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(where, message, hint, details, type(exc).__name__)
