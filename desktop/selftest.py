"""`wplus-studio --self-test`: prove an installation (or the PyInstaller bundle) works, offscreen.

Steps: start Qt offscreen, find the resources, parse the model manifest and look at the models folder
(informational only: a fresh install has no models), check that the named backend can run here, build
tiny REAL models in a temporary folder (for ONNX Runtime also their ONNX exports, for TensorRT also
its engines), render one 64×64 image with the generation pipeline ON THAT BACKEND (a fallback to
another backend fails the step, with the reason), and show it in a QImage. Prints one line per step
and a summary; returns 0, or 1 with the reason of the first failure.

Import rule exception: `desktop/` never imports torch or the engine's heavy modules, except through the
bridge and here. The self-test must exercise them, so its function-level imports reach the engine and
`export.prepare`; the import-linter contract names this module in its `ignore_imports` (so the exception
is visible and checked, not hidden behind `importlib`). This module is imported by `desktop/__main__.py`
only when `--self-test` is given, so it is not on the GUI's import path.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

BACKENDS = ("torch", "onnxruntime", "tensorrt")


class _Failed(Exception):
    pass


def _stream() -> TextIO:
    # A windowed (no-console) executable has no stdout; keep the report in a file then.
    if sys.stdout is not None:
        return sys.stdout
    return open(Path(tempfile.gettempdir()) / "wplus-selftest.txt", "w", encoding="utf-8")


def _step_qt() -> str:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import qVersion
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(["wplus-studio", "--self-test"])
    return f"Qt {qVersion()} platform {app.platformName()}"


def _step_resources() -> str:
    from engine.resources import resources_root

    root = resources_root()
    needed = ["models.toml", "directions"]
    missing = [n for n in needed if not (root / n).exists()]
    if missing:
        raise _Failed(f"resources folder {root} lacks {', '.join(missing)}")
    return f"{root} ({sum(1 for _ in root.rglob('*'))} entries)"


def _step_manifest(models_dir: str | None) -> str:
    from engine.api import ModelStatus
    from engine.config import EngineConfig
    from engine.models.folder import resolve_models_dir
    from engine.models.manifest import load_manifest
    from engine.models.verify import check_models

    manifest = load_manifest()
    folder, why = resolve_models_dir(models_dir)
    states = check_models(EngineConfig(models_dir=folder), manifest=manifest, verify=False)
    present = sum(s.status in (ModelStatus.OK, ModelStatus.UNVERIFIED) for s in states)
    missing = [s.id for s in states if s.required and s.status == ModelStatus.MISSING]
    note = f"; required but missing: {', '.join(missing)}" if missing else ""
    return f"{len(manifest.entries)} entries; models folder {folder} ({why}): {present} present{note}"


def _step_backend(name: str) -> str:
    if name not in BACKENDS:
        raise _Failed(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")
    import engine.backends.select as select
    status = select.probe().status(name)
    if not status.available:
        raise _Failed(f"{name} cannot run here: {status.reason}")
    version = f" {status.version}" if status.version else ""
    return f"{name}{version}: {status.reason}"


def _step_render(tmp: Path, backend: str) -> tuple[str, Any]:
    from dataclasses import replace

    import engine.api as api
    import engine.models.service as service
    import engine.pipeline.generate as generate
    import engine.testing.tiny as tiny
    t0 = time.perf_counter()
    root = tiny.write_tiny_models(tmp / "models")
    config = replace(tiny.tiny_config(root), backend=backend)
    if backend != "torch":
        # The exports (and engines) the backend loads, made from the tiny models for 64×64 images.
        import engine.backends.profiles as profiles
        import export.prepare as prepare
        prepare.prepare_backend(config, backend, profiles.ShapeProfile.static(64, 64, 1))
    built = time.perf_counter() - t0
    pipeline = generate.WPlusPipeline.from_service(service.ModelService(config))
    choice = pipeline.backend_choice
    if choice.backend != backend:
        raise _Failed(f"the pipeline did not open on {backend}: {choice.message}")
    request = api.GenerateRequest(
        prompt="a photo of a person", seed=7, steps=2, width=64, height=64, wplus=tiny.tiny_wplus(3)
    )
    t1 = time.perf_counter()
    result = pipeline.render(request)
    rendered = time.perf_counter() - t1
    import numpy as np

    image = np.asarray(result.images[0])
    if image.shape != (64, 64, 3) or image.dtype != np.uint8:
        raise _Failed(f"the render returned an image of shape {image.shape} {image.dtype}, expected 64×64×3 uint8")
    if float(image.std()) == 0.0:
        raise _Failed("the render returned a flat image")
    what = "tiny models" + ("" if backend == "torch" else " and their exports")
    return (f"{what} built in {built:.1f} s, 2 steps rendered on {choice.backend} ({choice.device}) "
            f"in {rendered:.1f} s"), image


def _step_show(image: Any) -> str:
    from PySide6.QtGui import QImage

    h, w, _ = image.shape
    qimg = QImage(image.tobytes(), w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    if qimg.isNull() or qimg.width() != w:
        raise _Failed("Qt could not take the rendered image")
    return f"QImage {qimg.width()}×{qimg.height()}"


def run_self_test(models_dir: str | None = None, backend: str | None = None, out: TextIO | None = None) -> int:
    """Run every step; print a line per step and a summary.

    Args:
        models_dir: the models folder to report on (default: the usual resolution rule).
        backend: the backend to render on (default: WPLUS_BACKEND or "torch"); the self-test fails
            when it cannot run here or the pipeline would fall back from it.
        out: where to print (default: stdout, or a file in the temp dir for a windowed executable).

    Returns:
        0 when every step passed, 1 otherwise (the failing step and its reason are printed).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    stream = out or _stream()
    chosen = backend or os.environ.get("WPLUS_BACKEND", "torch")
    frozen = "frozen bundle" if getattr(sys, "frozen", False) else "source"
    print(f"W+ Studio self-test ({frozen}; Python {platform.python_version()}; {platform.platform()})", file=stream)
    t_start = time.perf_counter()
    image: Any = None
    with tempfile.TemporaryDirectory(prefix="wplus-selftest-") as tmp:

        def render() -> str:
            nonlocal image
            text, image = _step_render(Path(tmp), chosen)
            return text

        steps: list[tuple[str, Callable[[], str]]] = [
            ("qt", _step_qt),
            ("resources", _step_resources),
            ("manifest", lambda: _step_manifest(models_dir)),
            ("backend", lambda: _step_backend(chosen)),
            ("render", render),
            ("display", lambda: _step_show(image)),
        ]
        for name, step in steps:
            t0 = time.perf_counter()
            try:
                detail = step()
            except BaseException as exc:  # the entry point: every failure becomes a reason and exit code 1
                if isinstance(exc, KeyboardInterrupt):
                    raise
                reason = getattr(exc, "user_message", None) or (
                    str(exc) if isinstance(exc, _Failed) else f"{type(exc).__name__}: {exc}"
                )
                print(f"[FAIL] {name}: {reason}", file=stream)
                if os.environ.get("WPLUS_DEBUG"):
                    traceback.print_exc(file=stream)
                print(f"self-test FAILED at step '{name}': {reason}", file=stream, flush=True)
                return 1
            print(f"[ ok ] {name}: {detail} ({time.perf_counter() - t0:.1f} s)", file=stream, flush=True)
    print(f"self-test passed in {time.perf_counter() - t_start:.1f} s", file=stream, flush=True)
    return 0
