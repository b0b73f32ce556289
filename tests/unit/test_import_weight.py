"""Light modules stay light: the GUI and `wplus --help` must not pay for torch at import time."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["engine.api", "engine.errors", "engine.config", "engine.session", "engine.cli"])
def test_module_imports_without_torch(module):
    code = f"import sys, {module}; heavy = [m for m in ('torch', 'diffusers', 'cv2', 'dlib', 'PySide6') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_cli_help_loads_no_heavy_module():
    code = (
        "import sys; from engine.cli import build_parser; build_parser(); "
        "print([m for m in ('torch', 'diffusers', 'cv2', 'dlib', 'PySide6', 'onnxruntime') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_global_options_are_accepted_after_the_subcommand(tmp_path, capsys):
    from engine.cli import main

    for argv in (["--models-dir", str(tmp_path), "models", "list"], ["models", "list", "--models-dir", str(tmp_path)]):
        assert main(argv) in (0, 1)
        assert f"models folder: {tmp_path} (chosen by --models-dir)" in capsys.readouterr().out
