"""Library output reaches the log file, the console only with --debug (`engine.logs`)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from engine.logs import setup_cli_logging
from engine.testing.tiny import tiny_wplus

REPO = Path(__file__).resolve().parents[2]
FLOAT32_HINT = "should be kept in float32"  # diffusers' warning when a model is cast with .to(dtype)


def _generate(tiny: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    np.save(tmp_path / "w.npy", tiny_wplus(1))
    env = {**os.environ, "WPLUS_LOG_DIR": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    cmd = [sys.executable, "-m", "engine", "--models-dir", str(tiny), "--device", "cpu", *extra, "generate",
           "--wplus", str(tmp_path / "w.npy"), "--model", str(tiny / "sd15"),
           "--adapter", str(tiny / "wplus_adapter.bin"), "--steps", "2", "--width", "64", "--height", "64",
           "--dtype", "float32", "--quiet", "--out", str(tmp_path / "out.png")]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_quiet_generate_prints_only_its_result(tiny, tmp_path):
    proc = _generate(tiny, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == [str(tmp_path / "out.png")]
    log = (tmp_path / "logs" / "wplus.log").read_text()
    assert FLOAT32_HINT in log  # the library warning was not lost, only kept off the console
    assert "engine.networks.sd15: loaded SD1.5" in log


def test_debug_shows_library_warnings_and_progress_bars(tiny, tmp_path):
    proc = _generate(tiny, tmp_path, "--debug")
    assert proc.returncode == 0, proc.stderr
    assert f"WARNING diffusers.models.modeling_utils: There are modules in UNet2DConditionModel that {FLOAT32_HINT}" in proc.stderr
    assert "Loading weights" in proc.stderr  # transformers' progress bar
    assert proc.stdout.splitlines() == [str(tmp_path / "out.png")]


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.parametrize("debug", [False, True])
def test_console_shows_our_records_and_others_only_with_debug(tmp_path, capsys, restore_root_logging, debug):
    path = setup_cli_logging("t", debug=debug, log_dir=tmp_path)
    logging.getLogger("accelerate.utils.modeling").warning("an accelerate hint")
    logging.getLogger("engine.pipeline.generate").warning("our own warning")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library deprecation", FutureWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert "WARNING engine.pipeline.generate: our own warning" in err
    assert ("an accelerate hint" in err) is debug
    assert ("a library deprecation" in err) is debug
    log = path.read_text()
    for text in ("an accelerate hint", "our own warning", "a library deprecation"):
        assert text in log
    assert path == tmp_path / "t.log"


def test_a_second_setup_replaces_the_handlers(tmp_path, restore_root_logging):
    setup_cli_logging("a", log_dir=tmp_path)
    setup_cli_logging("b", debug=True, log_dir=tmp_path)
    logging.getLogger("engine.x").warning("once")
    assert "once" in (tmp_path / "b.log").read_text()
    assert "once" not in (tmp_path / "a.log").read_text()
    kinds = [type(h).__name__ for h in logging.getLogger().handlers]
    assert kinds.count("_Console") == 1
    assert kinds.count("_LogFile") == 1


def test_wplus_export_logs_to_its_own_file_and_keeps_libraries_off_the_console(
    tmp_path, capsys, monkeypatch, restore_root_logging
):
    from export.cli import main

    monkeypatch.setenv("WPLUS_LOG_DIR", str(tmp_path / "logs"))
    assert main(["check", "--onnx-dir", str(tmp_path / "empty")]) == 0
    capsys.readouterr()
    logging.getLogger("onnxscript.optimizer").warning("an exporter hint")
    assert "an exporter hint" not in capsys.readouterr().err
    assert "an exporter hint" in (tmp_path / "logs" / "wplus-export.log").read_text()
