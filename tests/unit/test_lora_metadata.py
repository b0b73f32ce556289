"""LoRA and ControlNet settings in PNG metadata: A1111's conventions written, the request restored exactly."""

from __future__ import annotations

import numpy as np

from engine.api import ControlKind, ControlSpec, GenerateRequest, LoraSpec, Result
from engine.pipeline.metadata import a1111_parameters, parse_lora_tags, read_request, save_png


def _result(req: GenerateRequest) -> Result:
    img = np.full((64, 64, 3), 120, np.uint8)
    hashes = {"sd15/unet/diffusion_pytorch_model.safetensors": "0123456789abcdef",
              "lora:pastel_style": "aa3947cf76", "lora:ink": "bb12cd34ef"}
    return Result(request=req, images=(img,), seeds=(req.seed,), model_hashes=hashes)


def _pose() -> np.ndarray:
    img = np.zeros((96, 64, 3), np.uint8)
    img[10:80, 30:34] = (255, 0, 85)
    img[40:44, 5:60] = (0, 255, 170)
    return img


def test_loras_and_controls_round_trip_through_the_png(tmp_path):
    req = GenerateRequest(
        prompt="a portrait", seed=12, steps=5, width=64, height=64,
        loras=(LoraSpec("/models/loras/pastel_style.safetensors", 0.8), LoraSpec("/l/ink.safetensors", 0.5, 0.25)),
        controls=(ControlSpec("/models/cn/control_v11p_sd15_openpose.safetensors", _pose(), scale=0.7, start=0.1,
                              end=0.9, kind=ControlKind.OPENPOSE),),
    )
    res = _result(req)
    path = save_png(tmp_path / "out.png", res.images[0], res, 0)
    back = read_request(path)
    assert [(lo.path, lo.weight, lo.text_weight) for lo in back.loras] == [
        ("/models/loras/pastel_style.safetensors", 0.8, None), ("/l/ink.safetensors", 0.5, 0.25)]
    (c,) = back.controls
    assert (c.model, c.scale, c.start, c.end, c.kind) == (req.controls[0].model, 0.7, 0.1, 0.9, ControlKind.OPENPOSE)
    assert np.array_equal(c.image, _pose())
    assert c.key() == req.controls[0].key()  # the same cache key: a restored request hits the step cache


def test_a1111_parameters_use_lora_tags_hashes_and_controlnet_units():
    req = GenerateRequest(
        prompt="a portrait", width=64, height=64,
        loras=(LoraSpec("/x/pastel_style.safetensors", 0.8), LoraSpec("/x/ink.safetensors", 0.5, 0.25)),
        controls=(ControlSpec("/cn/control_v11p_sd15_openpose.safetensors", _pose(), scale=0.7,
                              kind=ControlKind.OPENPOSE),),
    )
    text = a1111_parameters(_result(req), 0)
    first = text.splitlines()[0]
    assert first == "a portrait <lora:pastel_style:0.8> <lora:ink:0.25:0.5>"
    assert 'Lora hashes: "pastel_style: aa3947cf76, ink: bb12cd34ef"' in text
    assert ('ControlNet 0: "Module: openpose, Model: control_v11p_sd15_openpose, Weight: 0.7, '
            'Guidance Start: 0, Guidance End: 1"') in text
    clean, tags = parse_lora_tags(first)
    assert clean == "a portrait"
    assert tags == [("pastel_style", 0.8, 0.8), ("ink", 0.5, 0.25)]


def test_no_loras_no_controls_no_extra_fields():
    text = a1111_parameters(_result(GenerateRequest(width=64, height=64)), 0)
    assert "<lora:" not in text
    assert "Lora hashes" not in text
    assert "ControlNet" not in text
