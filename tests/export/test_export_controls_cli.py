"""`python -m export controls` on the tiny models: files where the ONNX runners look, an ORT render from them
equal to torch (2/255), and its errors (missing files named, another family's LoRA refused, nothing asked)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from engine.api import ControlSpec, GenerateRequest, LoraSpec
from engine.testing.tiny import tiny_wplus
from export.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = ["--height", "64", "--width", "64"]


def _pose() -> np.ndarray:
    img = np.zeros((64, 64, 3), np.uint8)
    img[8:56, 30:34] = (255, 0, 85)
    img[20:24, 8:56] = (0, 255, 170)
    img[40:56, 20:24] = (170, 255, 0)
    return img


@pytest.fixture(scope="module")
def work(tiny_models, tmp_path_factory):
    """A working folder with a ControlNet and a LoRA made for the tiny models (the cwd of every CLI call)."""
    from engine.testing.controls import build_controlnet, write_a1111_controlnet, write_kohya_lora

    d = tmp_path_factory.mktemp("controls-cli")
    comps = tiny_models.components
    write_a1111_controlnet(d / "control_v11p_sd15_openpose.safetensors", build_controlnet(comps.unet))
    write_kohya_lora(d / "style.safetensors", comps.unet, comps.text_encoder, seed=9)
    return d


@pytest.fixture(scope="module")
def exported_controls(tiny_models, exported, work):
    """The base exports copied to work/onnx, then two `controls` runs with paths relative to work/."""
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    shutil.copytree(exported, work / "onnx")
    models = str(tiny_models.models_dir)
    try:
        runs = []
        for args in (["--controlnet", "control_v11p_sd15_openpose.safetensors", "--freeu"],
                     ["--lora", "style.safetensors:0.8:0.6", "--control-unet"]):
            code = main(["controls", "--models-dir", models, "--onnx-dir", "onnx", *SIZE, *args])
            runs.append(code)
    finally:
        mp.undo()
    assert runs == [0, 0]
    return work / "onnx"


def test_exports_land_where_the_onnx_runners_look(exported_controls, work):
    from engine.backends.artifacts import read_artifact
    from engine.backends.ort_controls import lora_set_key
    from engine.networks.lora import read_lora
    from export.controls import controlnet_file_key

    onnx = exported_controls
    cn = onnx / "controlnets" / f"{controlnet_file_key(work / 'control_v11p_sd15_openpose.safetensors')}.onnx"
    assert cn.is_file()
    assert dict(read_artifact(cn, "controlnet").extra) == {"n_down": "4",
                                                           "source": "control_v11p_sd15_openpose.safetensors"}
    freeu = {name: dict(read_artifact(onnx / f"{name}.onnx", "unet_control" if "control" in name else "unet").extra)
             for name in ("unet_control", "unet_freeu", "unet_control_freeu")}
    assert freeu["unet_control"] == {"freeu": "", "n_down": "4"}
    official = {"s1": 0.6, "s2": 0.4, "b1": 1.1, "b2": 1.2}
    assert json.loads(freeu["unet_freeu"]["freeu"]) == json.loads(freeu["unet_control_freeu"]["freeu"]) == official
    lora = read_lora(work / "style.safetensors")
    folder = onnx / "loras" / lora_set_key([(lora.short_hash, 0.8, 0.6)])
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["text_encoder.onnx", "unet.onnx", "unet_control.onnx"]
    assert json.loads((folder / "loras.json").read_text()) == [
        {"name": "style", "hash": lora.short_hash, "weight": 0.8, "text_weight": 0.6}]
    # the LoRA's path is recorded absolute (it was given relative to the cwd)
    recorded = [w for w in read_artifact(folder / "unet.onnx", "unet").weights if w.role.startswith("lora:")]
    assert [w.path for w in recorded] == [str(work / "style.safetensors")]
    assert not (onnx / "loras" / folder.name / "unet_freeu.onnx").exists()  # only what was asked


def test_an_ort_render_from_the_cli_exports_equals_torch(exported_controls, tiny_models, work):
    from engine.backends.ort_backend import OrtRunners
    from engine.pipeline.generate import WPlusPipeline

    torch_pipe = WPlusPipeline.from_components(tiny_models.components, tiny_models.wproj, device="cpu",
                                               dtype=torch.float32, step_cache_size=0)
    ort_pipe = WPlusPipeline(OrtRunners(exported_controls), torch_pipe.tokenizer, torch_pipe.scheduler_config,
                             vae_scaling_factor=torch_pipe.vae_scaling_factor,
                             vae_scale_factor=torch_pipe.vae_scale_factor, step_cache_size=0)
    req = GenerateRequest(prompt="a portrait photo", negative_prompt="blurry", seed=7, steps=4, width=64, height=64,
                          wplus=tiny_wplus(1), start_ratio=25.0,
                          controls=(ControlSpec(str(work / "control_v11p_sd15_openpose.safetensors"), _pose(),
                                                scale=0.9, start=0.25),),
                          loras=(LoraSpec(str(work / "style.safetensors"), 0.8, 0.6),))
    try:
        results = {}
        for name, r in (("both", req), ("control", req.replace(loras=())), ("freeu", req.replace(loras=(), freeu=True)),
                        ("plain", req.replace(controls=(), loras=()))):
            want = torch_pipe.render(r).images[0].astype(np.int16)
            got = ort_pipe.render(r).images[0].astype(np.int16)
            assert np.abs(got - want).max() <= 2, name
            assert want.std() > 5
            results[name] = want
    finally:
        torch_pipe.runners.set_loras(())  # the session's tiny UNet is shared by other tests
    assert np.abs(results["both"] - results["control"]).max() > 2  # the LoRA acts
    assert np.abs(results["control"] - results["plain"]).max() > 2  # the ControlNet acts
    assert np.abs(results["freeu"] - results["control"]).max() > 2  # FreeU acts


def _run(tiny_models, work, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.chdir(work)
    code = main(["controls", "--models-dir", str(tiny_models.models_dir), "--onnx-dir", "out", *SIZE, *args])
    return code, capsys.readouterr().err


def test_a_missing_controlnet_or_lora_is_named_before_anything_is_exported(tiny_models, work, monkeypatch, capsys):
    code, err = _run(tiny_models, work, monkeypatch, capsys, "--lora", "style.safetensors",
                     "--controlnet", "control_v11p_sd15_canny.safetensors")
    assert code == 1
    assert f"ControlNet not found: {work / 'control_v11p_sd15_canny.safetensors'}" in err
    assert "Traceback" not in err
    code, err = _run(tiny_models, work, monkeypatch, capsys, "--controlnet", "control_v11p_sd15_openpose.safetensors",
                     "--lora", "nothere.safetensors:0.5")
    assert code == 1
    assert f"LoRA file not found: {work / 'nothere.safetensors'}" in err
    assert not (work / "out").exists()


def test_a_lora_of_another_family_is_refused_by_name(tiny_models, work, monkeypatch, capsys):
    from safetensors.torch import save_file

    name = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 768), f"{name}.lora_up.weight": torch.zeros(768, 4)},
              str(work / "xl_style.safetensors"))
    code, err = _run(tiny_models, work, monkeypatch, capsys, "--lora", "xl_style.safetensors:0.7")
    assert code == 1
    assert "error: xl_style.safetensors is an SDXL LoRA, not an SD1.5 LoRA." in err
    assert not (work / "out").exists()


def test_nothing_requested_is_a_usage_error(tiny_models, work, monkeypatch, capsys):
    code, err = _run(tiny_models, work, monkeypatch, capsys)
    assert code == 2
    assert err.startswith("usage: ")
    assert "error: nothing to export: give --controlnet PATH, --control-unet, --freeu and/or --lora PATH" in err
