"""Typed errors that carry a message for the user and a hint on what to do.

Library code raises these; only thread tops and entry points catch broadly.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: `user_message` says what went wrong, `hint` what to do about it."""

    def __init__(self, user_message: str, hint: str = "") -> None:
        super().__init__(user_message if not hint else f"{user_message} — {hint}")
        self.user_message = user_message
        self.hint = hint


class ModelMissing(EngineError):
    """A required model file is not in the models folder."""


class ModelCorrupt(EngineError):
    """A model file exists but is truncated, has the wrong layout or fails its checksum."""


class WrongModelFamily(EngineError):
    """A checkpoint of another family (SD2, SDXL, …) where SD1.5 is expected."""


class UnsafeCheckpoint(ModelCorrupt):
    """A pickle that would execute code when loaded; refused before anything runs."""


class InvalidInput(EngineError):
    """A request, image or latent that cannot be used (wrong shape, NaN, bad size, …)."""


class ImageUnreadable(InvalidInput):
    """An image file that cannot be decoded, is too large, or has an unsupported format."""


class FaceNotFound(EngineError):
    """No usable face in the image."""


class BackendUnavailable(EngineError):
    """A backend (CUDA, ONNX Runtime, TensorRT) cannot be used here; the reason says why."""


class EngineMismatch(EngineError):
    """An exported engine does not match its weights, GPU or runtime version."""


class OutOfMemory(EngineError):
    """The device ran out of memory."""


class CameraError(EngineError):
    """A camera could not be opened or stopped delivering frames."""


class StorageError(EngineError):
    """A file could not be written (disk full, permissions)."""


class Cancelled(Exception):
    """Raised at a step boundary when the caller's CancelToken was set."""
