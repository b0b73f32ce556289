"""The whole generation pipeline on ONNX Runtime gives the torch image (within 2/255)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.api import GenerateRequest
from engine.backends.ort_backend import OrtRunners
from engine.backends.select import open_runners, probe
from engine.config import EngineConfig
from engine.pipeline.generate import WPlusPipeline
from engine.testing.tiny import tiny_wplus


def _request(**kw) -> GenerateRequest:
    args = {"prompt": "a portrait photo", "negative_prompt": "blurry", "seed": 7, "steps": 4, "width": 64,
            "height": 64, "wplus": tiny_wplus(1)}
    args.update(kw)
    return GenerateRequest(**args)


@pytest.fixture(scope="module")
def pipelines(tiny_models, exported):
    torch_pipe = WPlusPipeline.from_components(tiny_models.components, tiny_models.wproj, device="cpu",
                                               dtype=torch.float32, step_cache_size=0)
    ort_pipe = WPlusPipeline(
        OrtRunners(exported), torch_pipe.tokenizer, torch_pipe.scheduler_config,
        vae_scaling_factor=torch_pipe.vae_scaling_factor, vae_scale_factor=torch_pipe.vae_scale_factor,
        step_cache_size=0,
    )
    return torch_pipe, ort_pipe


@pytest.mark.parametrize("kw", [{}, {"width": 128, "height": 64, "seed": 3}, {"wplus": None, "guidance": 1.0}])
def test_same_image_as_torch(pipelines, kw):
    torch_pipe, ort_pipe = pipelines
    request = _request(**kw)
    want = torch_pipe.render(request).images[0].astype(np.int16)
    got = ort_pipe.render(request).images[0].astype(np.int16)
    assert got.shape == want.shape == (request.height, request.width, 3)
    assert np.abs(got - want).max() <= 2
    assert want.std() > 5  # a real image, not a flat field that would match anything


def test_identity_and_delayed_conditioning_reach_the_exported_unet(pipelines):
    """Delayed conditioning passes wplus_scale 0.0 then 1.0 as Python floats; both must work on ORT."""
    _torch_pipe, ort_pipe = pipelines
    with_id = ort_pipe.render(_request(start_ratio=0.0)).images[0].astype(np.int16)
    other_id = ort_pipe.render(_request(start_ratio=0.0, wplus=tiny_wplus(2))).images[0].astype(np.int16)
    assert np.abs(with_id - other_id).max() > 2


def test_open_runners_uses_the_exports_and_falls_back_with_the_reason(tiny_models, exported, tmp_path):
    report = probe()
    models = tmp_path / "models"
    (models / "onnx").mkdir(parents=True)
    for f in exported.iterdir():
        (models / "onnx" / f.name).symlink_to(f)
    config = EngineConfig(models_dir=models, device="cpu", backend="onnxruntime")
    built = []
    runners, choice = open_runners(config, lambda: built.append(1), report=report)
    assert (choice.backend, choice.fell_back) == ("onnxruntime", False)
    assert isinstance(runners, OrtRunners)
    assert built == []
    # A damaged UNet export: the app runs on torch and says why.
    (models / "onnx" / "unet.onnx").unlink()
    (models / "onnx" / "unet.onnx").write_bytes(b"broken")
    runners, choice = open_runners(config, lambda: "torch-runners", report=report)
    assert runners == "torch-runners"
    assert choice.backend == "torch"
    assert "onnxruntime could not open the exported models" in choice.message
    assert "unet.onnx has 6 bytes but was exported with" in choice.message
