"""`python -m export` on a tiny models folder: export, verify, check, stale detection, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from export.cli import main


def test_onnx_verify_check_and_stale(tiny_models, tmp_path, capsys):
    models = tiny_models.models_dir
    out = tmp_path / "onnx"
    code = main(["onnx", "--models-dir", str(models), "--components", "identity_proj", "--out", str(out),
                 "--profile", "static", "--height", "64", "--width", "64", "--verify"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert f"identity_proj: {out / 'identity_proj.onnx'}" in text
    assert "identity_proj.wplus_tokens (2, 4, 768) [onnxruntime, fp32]" in text
    assert "— ok" in text
    record = json.loads((out / "identity_proj.onnx.json").read_text())
    assert [w["role"] for w in record["weights"]] == ["adapter"]
    # the app runs the safetensors conversion of the official .bin, so that is what the export records
    assert record["weights"][0]["path"].endswith("wplus_adapter.safetensors")

    assert main(["check", "--onnx-dir", str(out)]) == 0
    assert "identity_proj: fp32, profile static-64x64-b1, opset 18 — up to date" in capsys.readouterr().out

    assert main(["verify", "--models-dir", str(models), "--onnx-dir", str(out), "--components", "identity_proj",
                 "--seeds", "1"]) == 0
    assert "— ok" in capsys.readouterr().out


def test_check_reports_stale_exports(tiny_models, tmp_path, capsys):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_models.models_dir, models)
    out = tmp_path / "onnx"
    assert main(["onnx", "--models-dir", str(models), "--components", "identity_proj", "--out", str(out),
                 "--profile", "static", "--height", "64", "--width", "64"]) == 0
    capsys.readouterr()
    recorded = json.loads((out / "identity_proj.onnx.json").read_text())["weights"][0]["path"]
    assert recorded.startswith(str(models))
    with open(recorded, "ab") as fh:  # the adapter file changes after the export
        fh.write(b"\0")
    assert main(["check", "--onnx-dir", str(out)]) == 1
    assert "identity_proj: fp32, profile static-64x64-b1, opset 18 — STALE (adapter changed)" in capsys.readouterr().out


def test_missing_models_give_a_message_not_a_traceback(tmp_path, capsys):
    code = main(["onnx", "--models-dir", str(tmp_path), "--components", "face_encoder", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ")
    assert "Traceback" not in err
    assert "hint: " in err


def test_usage():
    assert main([]) == 2
    with pytest.raises(SystemExit, match="unknown component"):
        main(["verify", "--components", "decoder"])


def test_module_entry_point_help_is_light():
    """`python -m export --help` answers without importing torch (the GUI's and CI's quick check)."""
    code = ("import sys, runpy; sys.argv = ['export', '--help']\n"
            "try:\n    runpy.run_module('export', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "onnx" in out.stdout
    assert out.stdout.strip().endswith("False")
