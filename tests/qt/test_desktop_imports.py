"""The GUI never imports torch (nor other heavy runtimes) when the window and the app are imported."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("torch", "diffusers", "transformers", "onnxruntime", "cv2", "dlib", "tensorrt")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


def test_main_window_and_app_do_not_import_torch():
    assert _loaded_after("import desktop.views.main_window, desktop.app, desktop.__main__") == []


def test_coalesce_is_pure_python():
    out = subprocess.run([sys.executable, "-c", "import sys, engine.coalesce; print('PySide6' in sys.modules)"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_building_the_window_loads_no_torch():
    code = (
        "from pathlib import Path; import tempfile\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from desktop.app import AppOptions, StudioApp\n"
        "t = Path(tempfile.mkdtemp())\n"
        "s = StudioApp(AppOptions(models_dir=t/'m', settings_path=t/'s.ini', log_dir=t/'l', data_dir=t/'d',"
        " start_engine=False, preload_faces=False))\n"
        "s.window.show(); app.processEvents(); s.shutdown()"
    )
    assert _loaded_after(code) == []


def test_face_tracker_preload_loads_dlib_in_the_background_but_no_torch():
    code = (
        "import time; from pathlib import Path; import tempfile\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from desktop.app import AppOptions, StudioApp\n"
        "t = Path(tempfile.mkdtemp())\n"
        "s = StudioApp(AppOptions(models_dir=t/'m', settings_path=t/'s.ini', log_dir=t/'l', data_dir=t/'d',"
        " start_engine=False))\n"
        "s.window.show(); app.processEvents()\n"
        "end = time.monotonic() + 60\n"
        "while not s.camera.analyzer_ready and time.monotonic() < end: time.sleep(0.05)\n"
        "assert s.camera.analyzer_ready\n"
        "s.shutdown()"
    )
    assert _loaded_after(code) == ["dlib"]


def test_only_the_bridge_imports_modules_by_name():
    """`importlib.import_module` would hide an import from the import-linter contract."""
    users = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "desktop").rglob("*.py")
                   if "import_module(" in p.read_text("utf-8"))
    assert set(users) <= {"desktop/engine_client.py"}, users
