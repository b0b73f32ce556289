"""ControlNet, LoRA and FreeU requests on ONNX Runtime give the torch image (within 2/255); gaps are named."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from engine.api import ControlSpec, GenerateRequest, LoraSpec
from engine.backends.ort_backend import OrtRunners
from engine.backends.profiles import ShapeProfile
from engine.errors import BackendUnavailable
from engine.pipeline.generate import WPlusPipeline
from engine.testing.tiny import tiny_wplus

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pose() -> np.ndarray:
    img = np.zeros((64, 64, 3), np.uint8)
    img[8:56, 30:34] = (255, 0, 85)
    img[20:24, 8:56] = (0, 255, 170)
    img[40:56, 20:24] = (170, 255, 0)
    return img


@pytest.fixture(scope="module")
def setup(tiny_models, exported, tmp_path_factory):
    """The base exports copied, plus a ControlNet graph, the FreeU UNet and one LoRA set with unet_control."""
    from engine.networks.wplus import WPlusUNet
    from engine.testing.controls import build_controlnet, write_a1111_controlnet, write_kohya_lora
    from export.controls import export_controlnet, export_lora_set, export_unet_variants

    d = tmp_path_factory.mktemp("controls-onnx")
    onnx_dir = d / "onnx"
    shutil.copytree(exported, onnx_dir)
    comps = tiny_models.components
    cn_path = write_a1111_controlnet(d / "control_v11p_sd15_openpose.safetensors", build_controlnet(comps.unet))
    lora = write_kohya_lora(d / "style.safetensors", comps.unet, comps.text_encoder, seed=9)
    profile = ShapeProfile.static(64, 64, 1)
    export_controlnet(cn_path, onnx_dir, profile=profile)
    export_unet_variants(WPlusUNet(comps.unet), onnx_dir, profile=profile, freeu=True)
    export_lora_set(comps, tiny_models.wproj, (LoraSpec(str(lora), 0.8, 0.6),), onnx_dir, profile=profile,
                    control_residuals=4)
    torch_pipe = WPlusPipeline.from_components(comps, tiny_models.wproj, device="cpu", dtype=torch.float32,
                                               step_cache_size=0)
    ort_pipe = WPlusPipeline(OrtRunners(onnx_dir), torch_pipe.tokenizer, torch_pipe.scheduler_config,
                             vae_scaling_factor=torch_pipe.vae_scaling_factor,
                             vae_scale_factor=torch_pipe.vae_scale_factor, step_cache_size=0)
    return torch_pipe, ort_pipe, cn_path, lora


def _request(**kw) -> GenerateRequest:
    args = {"prompt": "a portrait photo", "negative_prompt": "blurry", "seed": 7, "steps": 4, "width": 64,
            "height": 64, "wplus": tiny_wplus(1), "start_ratio": 25.0}
    args.update(kw)
    return GenerateRequest(**args)


def _compare(setup, request: GenerateRequest) -> np.ndarray:
    torch_pipe, ort_pipe, _cn, _lora = setup
    want = torch_pipe.render(request).images[0].astype(np.int16)
    got = ort_pipe.render(request).images[0].astype(np.int16)
    assert np.abs(got - want).max() <= 2
    assert want.std() > 5
    return want


def test_controlnet_with_a_lora_matches_torch(setup):
    _t, _o, cn, lora = setup
    req = _request(controls=(ControlSpec(str(cn), _pose(), scale=0.9, start=0.25),),
                   loras=(LoraSpec(str(lora), 0.8, 0.6),))
    with_both = _compare(setup, req)
    plain = _compare(setup, req.replace(controls=(), loras=()))
    assert np.abs(with_both - plain).max() > 2  # the ControlNet and LoRA really act on both backends


def test_freeu_matches_torch_on_the_flagged_graph(setup):
    on = _compare(setup, _request(freeu=True))
    off = _compare(setup, _request(freeu=False))
    assert np.abs(on - off).max() > 2


def test_an_export_that_lacks_what_the_request_needs_says_which(setup, tmp_path):
    _t, ort_pipe, cn, lora = setup
    other_cn = tmp_path / "control_v11p_sd15_canny.safetensors"
    shutil.copy(cn, other_cn)
    with open(other_cn, "ab") as fh:
        fh.write(b" ")  # another file (another sha256): not exported
    with pytest.raises(BackendUnavailable, match="control_v11p_sd15_canny"):
        ort_pipe.render(_request(controls=(ControlSpec(str(other_cn), _pose()),)))
    with pytest.raises(BackendUnavailable, match=r"LoRA set style:0\.5"):
        ort_pipe.render(_request(loras=(LoraSpec(str(lora), 0.5),)))
    with pytest.raises(BackendUnavailable, match="FreeU variant of the ControlNet UNet"):
        ort_pipe.render(_request(freeu=True, controls=(ControlSpec(str(cn), _pose()),)))
    with pytest.raises(BackendUnavailable, match="UNet graph that takes ControlNet residuals"):
        ort_pipe.render(_request(controls=(ControlSpec(str(cn), _pose()),)))
