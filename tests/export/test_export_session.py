"""The app's Session picks the configured backend from its config, and says so when it falls back."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from engine.api import GenerateRequest


@pytest.fixture(scope="module")
def models(tiny_models, exported, tmp_path_factory):
    """The tiny models folder with its ONNX exports in `<models>/onnx`, where the app looks for them."""
    root = tmp_path_factory.mktemp("models_with_onnx")
    shutil.copytree(tiny_models.models_dir, root, dirs_exist_ok=True)
    shutil.copytree(exported, root / "onnx")
    return root


def _render(config, request):
    from engine.session import Session

    session = Session(config)
    try:
        result = session.render(request)
        return result, session._pipeline().backend_choice
    finally:
        session.close()


def test_session_renders_on_onnxruntime_like_torch(models):
    from engine.testing.tiny import tiny_config, tiny_wplus

    config = tiny_config(models)
    request = GenerateRequest(prompt="a portrait", steps=3, width=64, height=64, seed=5, wplus=tiny_wplus(1))
    ort_result, ort_choice = _render(replace(config, backend="onnxruntime"), request)
    torch_result, torch_choice = _render(replace(config, backend="torch"), request)
    assert ort_choice.backend == "onnxruntime"
    assert not ort_choice.fallback_reasons
    assert torch_choice.backend == "torch"
    diff = np.abs(ort_result.images[0].astype(int) - torch_result.images[0].astype(int)).max()
    assert diff <= 2, f"ONNX Runtime image differs from torch by {diff}/255"
    assert ort_result.warnings == ()


def test_a_backend_that_cannot_run_falls_back_to_torch_and_says_why(tmp_path, tiny_models):
    from engine.testing.tiny import tiny_config

    shutil.copytree(tiny_models.models_dir, tmp_path, dirs_exist_ok=True)  # no onnx/ folder here
    request = GenerateRequest(prompt="a portrait", steps=2, width=64, height=64)
    result, choice = _render(replace(tiny_config(tmp_path), backend="onnxruntime"), request)
    assert choice.backend == "torch"
    assert "no ONNX exports" in result.warnings[0]
    assert "export them with" in result.warnings[0]
